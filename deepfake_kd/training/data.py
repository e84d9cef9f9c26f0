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

from .cli import positive_int
from .errors import DeepfakeKDError

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
                    bucket = zlib.crc32(file.stem.encode()) % 1000 / 1000
                    split = "val" if bucket < val_fraction else "train"
                    samples.append(Sample(file=f"{name}/{file.name}", label=label,
                                          source=file.stem, split=split))
        if not samples:
            raise DeepfakeKDError(f"{path}: no images under real/ or fake/")
        return path, samples
    raise DeepfakeKDError(f"{path}: neither a manifest file nor a folder")


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
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache.with_suffix(".tmp.npy"), crops)
        cache.with_suffix(".tmp.npy").rename(cache)
    return crops


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


# --- prepare-dfdc: face crops from the real DFDC videos ---------------------------------------
#
# `python -m deepfake_kd prepare-dfdc DFDC_DIR OUT_DIR` turns the DFDC training videos into a
# crop dataset in the format above (`real/`, `fake/`, manifest.csv), with the face pipeline the
# app uses: `sample_frames` (frames spread evenly over the clip, the middle one for a single
# frame) and `FaceDetector` (MTCNN on frames shrunk to 640 px, tight square crops, no margin,
# 224x224). Decisions:
#
# - One face per sampled frame: the largest (ties: the more probable). Only one of two people in
#   a DFDC fake may be swapped, and the largest face is the best guess at the subject; the others
#   are left out rather than risk labelling a real face "fake". Not "the main track": frames
#   spread over a 10 s clip are seconds apart, and the tracker, made for 32 frames, splits a
#   person who moved into several one-face tracks.
# - `source` is the stem of the real video a fake was made from ("original" in metadata.json),
#   a real video's own stem; `split` is val when crc32(source) % 1000 / 1000 < val_fraction,
#   the hash `read_samples` uses for folders, so a person's real and fake crops never straddle
#   the split. DFDC's own "split" field is ignored (it is "train" for every training video).
# - OUT_DIR/done.jsonl is the journal, one line per finished video (its crops, or why it was
#   skipped), appended after the video's JPEGs are written. A rerun skips every video in it
#   (skipped ones too, unless --retry-skipped) and rewrites manifest.csv and skipped.csv from
#   it, so they list everything made into OUT_DIR by any run: DFDC parts can be prepared one at
#   a time into the same OUT_DIR. A run that is killed loses at most the video in progress.
# - Cost: about 1.2 s per 10 s 1080p video on one thread (the three dev clips, one frame each),
#   mostly decoding up to the middle frame; all 119k DFDC training videos would take ~40 h, a
#   balanced set (--fakes-per-source 1, ~38k videos) ~13 h. `load_crops` holds every crop in
#   memory (147 kB each), another reason for one frame per video.

import argparse  # noqa: E402  (imports of this section, kept here to leave the above untouched)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from .faces import Face

PREPARE_JOURNAL = "done.jsonl"
PREPARE_SETTINGS = "prepare.json"
JPEG_QUALITY = 95


@dataclass(frozen=True)
class DFDCVideo:
    path: Path
    name: str  # as in metadata.json, e.g. "abcdefghij.mp4"; unique across DFDC
    label: str  # "real" or "fake"
    source: str  # stem of the real video it descends from (its own stem if real)


def split_of(source: str, val_fraction: float) -> str:
    """The split of every crop of `source`: stable across runs, machines and Python versions."""
    return "val" if zlib.crc32(source.encode()) % 1000 / 1000 < val_fraction else "train"


def dfdc_videos(dfdc_dir: str | Path, *, fakes_per_source: int | None = None,
                warn=print) -> list[DFDCVideo]:
    """Every video listed in a metadata.json under `dfdc_dir`, grouped by source (the real
    video first, then its fakes), sources in order of first appearance. `fakes_per_source`
    keeps that many fakes of each source (chosen by a stable hash of their names): 1 gives a
    balanced set like the shared crops; DFDC itself has about five fakes per real video."""
    dfdc_dir = Path(dfdc_dir)
    if not dfdc_dir.is_dir():
        raise DeepfakeKDError(f"{dfdc_dir}: not a folder")
    metadata_files = sorted(dfdc_dir.rglob("metadata.json"))
    if not metadata_files:
        raise DeepfakeKDError(f"{dfdc_dir}: no metadata.json found (expected the DFDC training "
                              "parts, e.g. dfdc_train_part_0/metadata.json beside its videos)")
    families: dict[str, list[DFDCVideo]] = {}
    seen: set[str] = set()
    for metadata in metadata_files:
        try:
            entries = json.loads(metadata.read_text())
            if not isinstance(entries, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            warn(f"warning: {metadata}: unreadable ({exc}); its videos are left out")
            continue
        for name, entry in entries.items():
            label = str((entry or {}).get("label", "")).strip().lower() \
                if isinstance(entry, dict) else ""
            if label not in LABELS:
                warn(f"warning: {metadata}: {name} has no REAL/FAKE label; left out")
                continue
            if name in seen:
                warn(f"warning: {metadata}: {name} is listed twice; the first entry is kept")
                continue
            seen.add(name)
            original = entry.get("original") if label == "fake" else None
            source = Path(original or name).stem
            families.setdefault(source, []).append(
                DFDCVideo(path=metadata.parent / name, name=name, label=label, source=source))
    videos = []
    for family in families.values():
        reals = [v for v in family if v.label == "real"]
        fakes = [v for v in family if v.label == "fake"]
        if fakes_per_source is not None:
            fakes = sorted(fakes, key=lambda v: (zlib.crc32(v.name.encode()), v.name))
            fakes = sorted(fakes[:fakes_per_source], key=family.index)
        videos += reals + fakes
    return videos


def main_faces(faces_per_frame: list[list[Face]]) -> list[tuple[int, Face]]:
    """(frame position, Face) of the largest face in each frame that has one (ties: the more
    probable)."""
    return [(i, max(faces, key=lambda f: (max(f.box[2] - f.box[0], f.box[3] - f.box[1]), f.prob)))
            for i, faces in enumerate(faces_per_frame) if faces]


def read_journal(out_dir: Path) -> dict[str, dict]:
    """Video name -> its last journal entry. A line cut short by a kill is ignored."""
    entries = {}
    journal = out_dir / PREPARE_JOURNAL
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
                entries[entry["video"]] = entry
            except (ValueError, KeyError, TypeError):
                continue
    return entries


def end_last_line(path: Path) -> None:
    """Append a newline if a kill cut the last line short, so the next entry starts afresh."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def write_csv_atomic(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_prepared_lists(out_dir: Path, val_fraction: float) -> tuple[int, int]:
    """manifest.csv and skipped.csv from the journal; returns (crops, skipped videos)."""
    entries = read_journal(out_dir).values()
    crops = sorted([file, e["label"], e["source"], split_of(e["source"], val_fraction)]
                   for e in entries if "files" in e for file in e["files"])
    skipped = sorted([e["video"], e["label"], e["source"], e["reason"], e.get("path", "")]
                     for e in entries if "reason" in e)
    write_csv_atomic(out_dir / "manifest.csv", ["file", "label", "source", "split"], crops)
    write_csv_atomic(out_dir / "skipped.csv", ["video", "label", "source", "reason", "path"],
                     skipped)
    return len(crops), len(skipped)


def check_prepare_settings(out_dir: Path, frames_per_video: int) -> None:
    """One OUT_DIR, one number of frames per video: a mix would skew the data unnoticed."""
    settings = out_dir / PREPARE_SETTINGS
    if settings.is_file():
        before = json.loads(settings.read_text()).get("frames_per_video")
        if before != frames_per_video:
            raise DeepfakeKDError(f"{out_dir} was prepared with --frames-per-video {before}; "
                                  f"rerun with that, or use a new OUT_DIR for {frames_per_video}")
    else:
        settings.write_text(json.dumps({"frames_per_video": frames_per_video}) + "\n")


def prepare_dfdc(dfdc_dir: str | Path, out_dir: str | Path, *, frames_per_video: int = 1,
                 val_fraction: float = 0.1, limit: int | None = None,
                 fakes_per_source: int | None = None, retry_skipped: bool = False,
                 detector=None, progress: bool = True, log=print) -> dict[str, int]:
    """Face crops of the DFDC videos under `dfdc_dir` into `out_dir` (see the notes above).
    `limit` caps the videos taken from the listing (whole source families first); videos in
    the journal are not redone. Returns counts: listed, processed, crops, skipped."""
    from tqdm import tqdm

    from .errors import VideoError
    from .limits import Limits
    from .video import sample_frames

    limits = Limits()
    if not 1 <= frames_per_video <= limits.max_frames:
        raise DeepfakeKDError(f"--frames-per-video must be between 1 and {limits.max_frames}")
    out_dir = Path(out_dir)
    videos = dfdc_videos(dfdc_dir, fakes_per_source=fakes_per_source, warn=log)
    if limit is not None:
        videos = videos[:limit]
    for name in LABELS:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    check_prepare_settings(out_dir, frames_per_video)
    done = read_journal(out_dir)
    todo = [v for v in videos if v.name not in done
            or (retry_skipped and "reason" in done[v.name])]
    log(f"{len(videos)} videos listed, {len(videos) - len(todo)} already done, "
        f"{len(todo)} to process")
    new_crops = new_skipped = 0
    try:
        if todo:
            if detector is None:
                from .faces import FaceDetector

                detector = FaceDetector()
            # FFmpeg's own complaints about corrupt files would scatter over the progress bar;
            # each skipped video's reason goes to skipped.csv instead.
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        journal_path = out_dir / PREPARE_JOURNAL
        end_last_line(journal_path)
        with journal_path.open("a") as journal, \
                tqdm(todo, desc="prepare-dfdc", unit="video",
                     disable=not (progress and todo)) as bar:
            for video in bar:
                entry = {"video": video.name, "label": video.label, "source": video.source}
                try:
                    sampled = sample_frames(video.path, frames_per_video, limits)
                    faces = main_faces(detector.detect(sampled.frames))
                    if not faces:
                        raise VideoError(f"no face found in {len(sampled.frames)} sampled "
                                         "frame(s)")
                except (VideoError, cv2.error, RuntimeError, ValueError) as exc:
                    entry.update(reason=str(exc).replace("\n", " "), path=str(video.path))
                    new_skipped += 1
                else:
                    files = []
                    for i, face in faces:
                        stem = Path(video.name).stem
                        file = f"{video.label}/{stem}_{sampled.indices[i]:04d}.jpg"
                        image = cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR)
                        if not cv2.imwrite(str(out_dir / file), image,
                                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                            raise DeepfakeKDError(f"{out_dir / file}: cannot write (disk full?)")
                        files.append(file)
                    entry["files"] = files
                    new_crops += len(files)
                journal.write(json.dumps(entry) + "\n")
                journal.flush()
                bar.set_postfix(crops=new_crops, skipped=new_skipped)
    finally:  # also after Ctrl-C: the lists always match the journal
        crops, skipped = write_prepared_lists(out_dir, val_fraction)
    log(f"this run: {len(todo)} videos, {new_crops} crops, {new_skipped} skipped; "
        f"{out_dir / 'manifest.csv'}: {crops} crops in all, {skipped} videos in "
        f"{out_dir / 'skipped.csv'}")
    return {"listed": len(videos), "processed": len(todo), "crops": crops, "skipped": skipped}


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare-dfdc", help="face crops and a manifest from the DFDC training videos",
        description="Read every metadata.json under DFDC_DIR, cut face crops from the videos "
                    "with the app's face pipeline, and write OUT_DIR/real/, OUT_DIR/fake/, "
                    "OUT_DIR/manifest.csv (file,label,source,split; split by source video) "
                    "and OUT_DIR/skipped.csv. Resumable: rerun to continue.")
    parser.add_argument("dfdc_dir", metavar="DFDC_DIR", help="folder with the DFDC parts")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where the crops go")
    parser.add_argument("--frames-per-video", type=positive_int, default=1, metavar="N",
                        help="frames sampled per video, one crop of the main face from each "
                             "(default 1, as the shared crops)")
    parser.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F",
                        help="share of source videos in the val split (default 0.1)")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="take only the first N listed videos (real video, then its fakes)")
    parser.add_argument("--fakes-per-source", type=positive_int, metavar="K",
                        help="keep K fakes of each real video (default all; 1 gives a balanced "
                             "set like the shared crops)")
    parser.add_argument("--retry-skipped", action="store_true",
                        help="process again the videos a previous run skipped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_prepare_cli)


def run_prepare_cli(args: argparse.Namespace) -> int:
    prepare_dfdc(args.dfdc_dir, args.out_dir, frames_per_video=args.frames_per_video,
                 val_fraction=args.val_fraction, limit=args.limit,
                 fakes_per_source=args.fakes_per_source, retry_skipped=args.retry_skipped,
                 progress=not args.no_progress,
                 log=lambda message: print(message, file=sys.stderr))
    return 0
