"""Face-crop datasets for training and evaluation, and the CPU augmentations applied to them.

A dataset is a manifest (`file,label,source,split`, as ../shared/data/dfdc_faces/manifest.csv) or a
folder with `real/` and `fake/` subfolders. Crops are decoded once into one uint8 array
[N, H, W, 3] and cached on disk (memory-mapped), because JPEG decoding would otherwise cost more
than the student's whole training step on a 2-core CPU.
"""

from __future__ import annotations

import csv
import hashlib
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import DeepfakeKDError
from ..util import atomic_path, fork_map

LABELS = {"real": 0, "fake": 1}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CROP_SIZE = 224


@dataclass(frozen=True)
class Sample:
    file: str  # relative to the dataset root
    label: int  # 1 = fake
    source: str  # the real video a crop descends from; splits never straddle a source
    split: str


def read_samples(path: str | Path, *, val_fraction: float = 0.1) -> tuple[Path, list[Sample]]:
    """(root, samples) from a manifest CSV, or from a folder with real/ and fake/ subfolders.

    A folder has no split column: it is split by a hash of each file's stem, so the split is
    stable across runs and machines."""
    path = Path(path)
    if path.is_file():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        missing = {"file", "label"} - set(rows[0] if rows else {})
        if missing:
            raise DeepfakeKDError(f"{path}: manifest lacks column(s) {sorted(missing)}")
        samples = [Sample(file=r["file"], label=LABELS[r["label"].strip().lower()],
                          source=r.get("source") or Path(r["file"]).stem,
                          split=r.get("split") or "train") for r in rows]
        return path.parent, samples
    if path.is_dir():
        samples = []
        for name, label in LABELS.items():
            for file in sorted((path / name).glob("*")):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    samples.append(Sample(file=f"{name}/{file.name}", label=label,
                                          source=file.stem, split=split_of(file.stem,
                                                                           val_fraction)))
        if not samples:
            raise DeepfakeKDError(f"{path}: no images under real/ or fake/")
        return path, samples
    raise DeepfakeKDError(f"{path}: neither a manifest file nor a folder")


def split_of(source: str, val_fraction: float) -> str:
    """The split of every crop of `source`: stable across runs, machines and Python versions."""
    return "val" if zlib.crc32(source.encode()) % 1000 / 1000 < val_fraction else "train"


def decode_crop(path: Path, size: int = CROP_SIZE) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DeepfakeKDError(f"{path}: not a readable image")
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_nth(paths: list[Path], size: int, i: int) -> np.ndarray:
    return decode_crop(paths[i], size)


def load_crops(root: Path, samples: list[Sample], *, cache_dir: str | Path | None = None,
               size: int = CROP_SIZE, progress: bool = False) -> np.ndarray:
    """All crops as uint8 [N, size, size, 3], decoded once and memory-mapped from the cache."""
    key = hashlib.sha1(f"{root.resolve()}|{size}|".encode()
                       + "\n".join(s.file for s in samples).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"crops-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache, mmap_mode="r")
    crops = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    block = 4096
    starts = range(0, len(samples), block)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"decoding {len(samples)} crops, {block} at a time")
    for start in starts:
        paths = [root / s.file for s in samples[start:start + block]]
        crops[start:start + len(paths)] = fork_map(partial(decode_nth, paths, size), len(paths))
    if cache is not None:
        with atomic_path(cache) as tmp:
            np.save(tmp, crops)
    return crops


def load_split(manifest: str | Path, split: str, *, cache_dir, limit: int | None = None,
               progress: bool = True):
    """(crops uint8 [N,224,224,3], labels [N]) of one split, decoded once and cached."""
    root, samples = read_samples(manifest)
    chosen = [s for s in samples if s.split == split]
    if limit:
        chosen = chosen[:limit]
    crops = load_crops(root, chosen, cache_dir=cache_dir, progress=progress)
    return crops, np.array([s.label for s in chosen], dtype=np.int64)


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] (numpy, maybe memory-mapped) -> uint8 [N,3,H,W] tensor."""
    return torch.from_numpy(np.array(crops, dtype=np.uint8)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- degradations and augmentation
#
# Real footage reaches the models softer, smaller and more compressed than the DFDC crops: a face
# of 60 px in a 480p clip, a phone's blur, a platform's JPEG. DFDC fakes are on average softer
# than their reals, so a model trained on clean crops learns "soft => fake" and calls real 480p
# footage fake. Each degradation below is applied to real and fake crops alike (augmentation),
# and deterministically (the robustness report in `evaluate`), so the shortcut neither pays in
# training nor hides in evaluation. Sizes are relative to a 224 px crop, so the same recipe holds
# for a student that trains on smaller images.

def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """RGB uint8 [H,W,3] through a JPEG encode and decode at `quality` (1-100)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]) if ok else image


def shrink_and_restore(image: np.ndarray, face_px: float, *, upscale=cv2.INTER_LINEAR
                       ) -> np.ndarray:
    """The crop as if its face had been `face_px` pixels wide (of a 224 px crop) and then scaled
    back up, as a face in a low-resolution clip is."""
    h, w = image.shape[:2]
    small = max(4, round(w * face_px / CROP_SIZE))
    if small >= w:
        return image
    down = cv2.resize(image, (small, max(4, round(h * small / w))), interpolation=cv2.INTER_AREA)
    return cv2.resize(down, (w, h), interpolation=upscale)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with `sigma` in pixels of a 224 px crop."""
    sigma = sigma * image.shape[1] / CROP_SIZE
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma) if sigma > 0 else image


# name -> degradation of one RGB uint8 crop: the robustness report's conditions. "combined" is
# what a small face in a compressed low-resolution clip goes through: shrink, blur, then encode.
DEGRADATIONS = {
    "shrink64": lambda im: shrink_and_restore(im, 64),
    "jpeg35": lambda im: jpeg_roundtrip(im, 35),
    "blur1.2": lambda im: gaussian_blur(im, 1.2),
    "combined": lambda im: jpeg_roundtrip(gaussian_blur(shrink_and_restore(im, 64), 1.2), 35),
}


def degrade_crops(crops: np.ndarray, name: str) -> np.ndarray:
    """Every crop of uint8 [N,H,W,3] through one of `DEGRADATIONS` (deterministic)."""
    if name not in DEGRADATIONS:
        raise DeepfakeKDError(f"unknown degradation {name!r}; choose from "
                              f"{', '.join(DEGRADATIONS)}")
    return np.stack([DEGRADATIONS[name](np.asarray(c)) for c in crops]) if len(crops) \
        else np.asarray(crops)


@dataclass(frozen=True)
class Augment:
    """Training augmentation of a uint8 batch [N,3,H,W] -> uint8 [N,3,H,W], the same for real and
    fake crops. After the DFDC winner's recipe (selimsef/dfdc_deepfake_challenge: compression,
    downscale, noise, blur, colour, grey, shift-scale-rotate, cut-out of face parts), aimed at the
    low-resolution shortcut: geometry (the app's MTCNN boxes show more forehead than the dataset's
    crops, hence +-15% scale), colour, cut-out, then the degradations in the order footage meets
    them: downscale, blur, noise, JPEG last. Probabilities are per crop; 0 switches a step off."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.85, 1.15)  # zoom of shift-scale-rotate (<1: face smaller)
    shift: float = 0.08  # of the crop's size
    max_rotation: float = 10.0  # degrees
    colour: float = 0.8  # probability of brightness / contrast / saturation jitter
    colour_strength: float = 0.25
    grey: float = 0.1
    cutout: float = 0.3  # a face part (eyes, nose, mouth band) or half the image, filled flat
    downscale: float = 0.4  # shrink to face_px in [48, 224] (log-uniform) and back
    blur: float = 0.25  # Gaussian, sigma in [0.3, 1.8]
    noise: float = 0.25  # Gaussian, std in [2, 10] grey levels
    jpeg: float = 0.5  # quality in [30, 100]

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        assert batch.ndim == 4 and batch.shape[1] == 3 and batch.dtype == torch.uint8, \
            f"expected uint8 [N,3,H,W], got {batch.dtype} {tuple(batch.shape)}"
        cv2.setNumThreads(1)  # per-crop work on 224 px images: a thread pool only adds overhead
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        images = batch.permute(0, 2, 3, 1).numpy()
        out = np.stack([self.one(np.ascontiguousarray(im), rng) for im in images])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        # geometry: one warp for flip, zoom, rotation and shift
        zoom = rng.uniform(*self.scale)
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-1, 1) * self.max_rotation,
                                         zoom)
        matrix[:, 2] += rng.uniform(-1, 1, 2) * self.shift * np.array([w, h])
        if rng.random() < self.flip:
            matrix[0] = -matrix[0]
            matrix[0, 2] += w
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        x = image.astype(np.float32)
        if rng.random() < self.colour:
            s = self.colour_strength
            grey = x.mean(axis=2, keepdims=True)
            x = grey + (x - grey) * (1 + rng.uniform(-s, s))  # saturation
            x = x.mean() + (x - x.mean()) * (1 + rng.uniform(-s, s))  # contrast
            x = x * (1 + rng.uniform(-s, s))  # brightness
        if rng.random() < self.grey:
            x = np.repeat(x @ np.array([[0.299], [0.587], [0.114]], np.float32), 3, axis=2)
        if rng.random() < self.cutout:
            x = self.cut(x, rng)
        image = np.clip(x, 0, 255).round().astype(np.uint8)
        if rng.random() < self.downscale:
            image = shrink_and_restore(image, float(np.exp(rng.uniform(np.log(48), np.log(224)))),
                                       upscale=(cv2.INTER_LINEAR, cv2.INTER_CUBIC)[rng.integers(2)])
        if rng.random() < self.blur:
            image = gaussian_blur(image, rng.uniform(0.3, 1.8))
        if rng.random() < self.noise:
            noisy = image + rng.normal(0, rng.uniform(2, 10), image.shape)
            image = np.clip(noisy, 0, 255).round().astype(np.uint8)
        if rng.random() < self.jpeg:
            image = jpeg_roundtrip(image, int(rng.integers(30, 101)))
        return image

    @staticmethod
    def cut(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blank a face part or half the image (tight crops: eyes ~0.2-0.45 of the height, nose
        ~0.4-0.65, mouth ~0.6-0.85), so no single region decides."""
        h, w = x.shape[:2]
        fill = 0.0 if rng.random() < 0.5 else x.mean(axis=(0, 1))
        x = x.copy()
        kind = rng.integers(5)
        if kind < 3:  # a horizontal band over the eyes, the nose or the mouth
            top, bottom = ((0.18, 0.45), (0.38, 0.65), (0.58, 0.88))[kind]
            jitter = rng.uniform(-0.05, 0.05)
            x[int(h * (top + jitter)):int(h * (bottom + jitter))] = fill
        elif kind == 3:  # the left or the right half
            x[:, slice(0, w // 2) if rng.random() < 0.5 else slice(w // 2, w)] = fill
        else:  # the top or the bottom half
            x[slice(0, h // 2) if rng.random() < 0.5 else slice(h // 2, h)] = fill
        return x


def class_balance_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample loss weights that give real and fake the same total weight (mean 1): the
    training split has 13,158 real and 21,497 fake crops, and an unweighted loss would pull every
    score towards "fake" (the failure that matters most to a user). Weighting keeps every crop,
    which balanced sampling with replacement would not."""
    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if (counts == 0).any():
        return np.ones(len(labels), dtype=np.float32)
    return (len(labels) / (2 * counts))[labels].astype(np.float32)


def batches(num_items: int, batch_size: int, *, generator: torch.Generator | None = None):
    """Index batches over a dataset; shuffled (and last partial batch dropped) with a generator."""
    order = torch.randperm(num_items, generator=generator) if generator is not None \
        else torch.arange(num_items)
    stop = num_items - num_items % batch_size if generator is not None else num_items
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
