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
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepfakeKDError
from ..util import atomic_path

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


def load_crops(root: Path, samples: list[Sample], *, cache_dir: str | Path | None = None,
               size: int = CROP_SIZE, progress: bool = False) -> np.ndarray:
    """All crops as uint8 [N, size, size, 3], decoded once and memory-mapped from the cache."""
    key = hashlib.sha1(f"{root.resolve()}|{size}|".encode()
                       + "\n".join(s.file for s in samples).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"crops-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache, mmap_mode="r")
    crops = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    iterator = range(len(samples))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="decoding crops", unit="img")
    for i in iterator:
        crops[i] = decode_crop(root / samples[i].file, size)
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


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else image


@dataclass(frozen=True)
class Augment:
    """Augmentations in the spirit of the reference (compression, noise, flips, colour, affine),
    applied to a uint8 batch [N,3,H,W]; returns uint8 of the same shape."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.8, 1.0)  # area kept by the random resized crop
    max_rotation: float = 10.0  # degrees
    colour: float = 0.2  # brightness / contrast / saturation jitter
    noise: float = 0.3  # probability of Gaussian noise (std up to 8 grey levels)
    jpeg: float = 0.3  # probability of a JPEG re-encode at quality 40-95

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = batch.shape
        rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
        if self.jpeg > 0:
            hit = (rand(n) < self.jpeg).nonzero().flatten().tolist()
            if hit:
                batch = batch.clone()
                qualities = (40 + rand(len(hit)) * 55).int().tolist()
                for i, q in zip(hit, qualities):
                    image = jpeg_roundtrip(batch[i].permute(1, 2, 0).numpy(), q)
                    batch[i] = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        x = batch.float() / 255.0
        # affine: random resized crop + rotation + flip, one grid_sample for all of them
        scale = torch.sqrt(self.scale[0] + rand(n) * (self.scale[1] - self.scale[0]))
        angle = (rand(n) * 2 - 1) * self.max_rotation * torch.pi / 180
        shift = (rand(n, 2) * 2 - 1) * (1 - scale).unsqueeze(1)
        flip = torch.where(rand(n) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                             torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
        # colour: brightness, contrast, saturation
        jitter = lambda: 1 + (rand(n, 1, 1, 1) * 2 - 1) * self.colour  # noqa: E731
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * jitter()
        x = x.mean(dim=(1, 2, 3), keepdim=True) + (x - x.mean(dim=(1, 2, 3), keepdim=True)) * jitter()
        x = x * jitter()
        if self.noise > 0:
            sigma = (rand(n, 1, 1, 1) < self.noise) * rand(n, 1, 1, 1) * (8 / 255)
            x = x + torch.randn(x.shape, generator=generator) * sigma
        return (x.clamp_(0, 1) * 255).round_().to(torch.uint8)


def batches(num_items: int, batch_size: int, *, generator: torch.Generator | None = None):
    """Index batches over a dataset; shuffled (and last partial batch dropped) with a generator."""
    order = torch.randperm(num_items, generator=generator) if generator is not None \
        else torch.arange(num_items)
    stop = num_items - num_items % batch_size if generator is not None else num_items
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
