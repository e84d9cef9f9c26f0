"""prepare-dfdc: face crops from the real DFDC videos.

`python -m deepfake_kd prepare-dfdc DFDC_DIR OUT_DIR` turns the DFDC training videos into a
crop dataset in the format of `data` (`real/`, `fake/`, manifest.csv), with the face pipeline the
app uses: `sample_frames` (frames spread evenly over the clip, the middle one for a single
frame) and `FaceDetector` (MTCNN on frames shrunk to 640 px, tight square crops, no margin,
224x224). Decisions:

- One face per sampled frame: the largest (ties: the more probable). Only one of two people in
  a DFDC fake may be swapped, and the largest face is the best guess at the subject; the others
  are left out rather than risk labelling a real face "fake". Not "the main track": frames
  spread over a 10 s clip are seconds apart, and the tracker, made for 32 frames, splits a
  person who moved into several one-face tracks.
- `source` is the stem of the real video a fake was made from ("original" in metadata.json),
  a real video's own stem; `split` is val when crc32(source) % 1000 / 1000 < val_fraction,
  the hash `read_samples` uses for folders, so a person's real and fake crops never straddle
  the split. DFDC's own "split" field is ignored (it is "train" for every training video).
- OUT_DIR/done.jsonl is the journal, one line per finished video (its crops, or why it was
  skipped), appended after the video's JPEGs are written. A rerun skips every video in it
  (skipped ones too, unless --retry-skipped) and rewrites manifest.csv and skipped.csv from
  it, so they list everything made into OUT_DIR by any run: DFDC parts can be prepared one at
  a time into the same OUT_DIR. A run that is killed loses at most the video in progress.
- Cost: about 1.2 s per 10 s 1080p video on one thread (the three dev clips, one frame each),
  mostly decoding up to the middle frame; all 119k DFDC training videos would take ~40 h, a
  balanced set (--fakes-per-source 1, ~38k videos) ~13 h. `load_crops` holds every crop in
  memory (147 kB each), another reason for one frame per video.
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2

from ..errors import DeepfakeKDError, VideoError
from ..limits import Limits
from ..pipeline import faces as faces_module
from ..pipeline.faces import Face
from ..pipeline.video import quiet_ffmpeg, sample_frames
from ..util import atomic_path
from .data import LABELS, split_of

PREPARE_JOURNAL = "done.jsonl"
PREPARE_SETTINGS = "prepare.json"
JPEG_QUALITY = 95


@dataclass(frozen=True)
class DFDCVideo:
    path: Path
    name: str  # as in metadata.json, e.g. "abcdefghij.mp4"; unique across DFDC
    label: str  # "real" or "fake"
    source: str  # stem of the real video it descends from (its own stem if real)


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
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


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
                detector = faces_module.FaceDetector()
            # FFmpeg's own complaints about corrupt files would scatter over the progress bar;
            # each skipped video's reason goes to skipped.csv instead.
            quiet_ffmpeg()
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
