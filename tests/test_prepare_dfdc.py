"""`python -m deepfake_kd prepare-dfdc`: a DFDC-shaped folder (two parts, each a metadata.json
beside its videos) -> face crops, manifest, skipped list; resuming; the listing rules."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfake_kd.cli import main
from deepfake_kd.pipeline.faces import Face
from deepfake_kd.training.data import LABELS, read_samples
from deepfake_kd.training.prepare_dfdc import dfdc_videos, main_faces

# At --val-fraction 0.5, crc32 puts source "alpha" (0.690) in train and "bravo" (0.265) in val.
PART_0 = {"alpha.mp4": {"label": "REAL", "split": "train", "original": None},
          "alphafake.mp4": {"label": "FAKE", "split": "train", "original": "alpha.mp4"},
          "corrupt.mp4": {"label": "FAKE", "split": "train", "original": "alpha.mp4"}}
PART_1 = {"bravofake.mp4": {"label": "FAKE", "split": "train", "original": "bravo.mp4"},
          "noface.mp4": {"label": "REAL", "split": "train"},
          "bravo.mp4": {"label": "REAL", "split": "train"},
          "missing.mp4": {"label": "FAKE", "split": "train", "original": "bravo.mp4"}}
# Two frames per video: face_clip (12 frames) gives frames 3 and 9, portrait_clip (8) 2 and 6.
EXPECTED = [
    ["fake/alphafake_0003.jpg", "fake", "alpha", "train"],
    ["fake/alphafake_0009.jpg", "fake", "alpha", "train"],
    ["fake/bravofake_0003.jpg", "fake", "bravo", "val"],
    ["fake/bravofake_0009.jpg", "fake", "bravo", "val"],
    ["real/alpha_0003.jpg", "real", "alpha", "train"],
    ["real/alpha_0009.jpg", "real", "alpha", "train"],
    ["real/bravo_0002.jpg", "real", "bravo", "val"],
    ["real/bravo_0006.jpg", "real", "bravo", "val"],
]


@pytest.fixture(scope="module")
def dfdc_dir(tmp_path_factory, face_clip, portrait_clip, no_face_clip, landscape, make_clip
             ) -> Path:
    root = tmp_path_factory.mktemp("dfdc")
    part_0, part_1 = root / "dfdc_train_part_0", root / "dfdc_train_part_1"
    part_0.mkdir()
    part_1.mkdir()
    (part_0 / "metadata.json").write_text(json.dumps(PART_0))
    (part_1 / "metadata.json").write_text(json.dumps(PART_1))
    tinted = [(frame * np.array([1.0, 0.8, 0.75])).astype(np.uint8) for frame in landscape]
    make_clip(part_0 / "alphafake.mp4", tinted, fps=10)
    shutil.copy(part_0 / "alphafake.mp4", part_1 / "bravofake.mp4")
    shutil.copy(face_clip, part_0 / "alpha.mp4")
    shutil.copy(portrait_clip, part_1 / "bravo.mp4")
    shutil.copy(no_face_clip, part_1 / "noface.mp4")
    (part_0 / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return root


class CountingDetector:
    """The session's detector, counting the clips it is asked about."""

    def __init__(self, detector):
        self.detector, self.calls = detector, 0

    def detect(self, frames, **kwargs):
        self.calls += 1
        return self.detector.detect(frames, **kwargs)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_prepare_resume_and_outputs(dfdc_dir, tmp_path, detector, monkeypatch):
    counting = CountingDetector(detector)
    built = []
    monkeypatch.setattr("deepfake_kd.pipeline.faces.FaceDetector",
                        lambda: built.append(1) or counting)
    out = tmp_path / "crops"
    args = ["prepare-dfdc", str(dfdc_dir), str(out), "--frames-per-video", "2",
            "--val-fraction", "0.5", "--no-progress"]

    # --limit takes whole families in listing order: alpha, then its fakes
    assert main(args + ["--limit", "2"]) == 0
    assert counting.calls == 2
    assert [row[0] for row in read_rows(out / "manifest.csv")[1:]] == [
        "fake/alphafake_0003.jpg", "fake/alphafake_0009.jpg",
        "real/alpha_0003.jpg", "real/alpha_0009.jpg"]

    # the full run resumes: alpha and alphafake are not redone; one detector for the run
    assert main(args) == 0
    assert counting.calls == 2 + 3  # bravo, bravofake, noface; corrupt and missing fail earlier
    assert len(built) == 2
    manifest = (out / "manifest.csv").read_bytes()
    rows = read_rows(out / "manifest.csv")
    assert rows[0] == ["file", "label", "source", "split"]
    assert rows[1:] == EXPECTED
    skipped = {row[0]: row for row in read_rows(out / "skipped.csv")[1:]}
    assert set(skipped) == {"corrupt.mp4", "missing.mp4", "noface.mp4"}
    assert "no face" in skipped["noface.mp4"][3]
    assert "no such file" in skipped["missing.mp4"][3]
    assert "not a readable video" in skipped["corrupt.mp4"][3]
    assert skipped["corrupt.mp4"][1:3] == ["fake", "alpha"]

    for file, *_ in EXPECTED:
        path = out / file
        assert path.read_bytes()[:2] == b"\xff\xd8"  # JPEG
        assert cv2.imread(str(path)).shape == (224, 224, 3)
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.jpg")) == \
        sorted(row[0] for row in EXPECTED)

    root, samples = read_samples(out / "manifest.csv")
    assert root == out and len(samples) == len(EXPECTED)
    assert {(s.file, s.label, s.source, s.split) for s in samples} == {
        (file, LABELS[label], source, split) for file, label, source, split in EXPECTED}

    # a rerun does nothing and builds no detector; the lists come out the same
    assert main(args) == 0
    assert counting.calls == 5 and len(built) == 2
    assert (out / "manifest.csv").read_bytes() == manifest
    # --retry-skipped tries the skipped videos again; they are skipped again
    assert main(args + ["--retry-skipped"]) == 0
    assert counting.calls == 6  # noface only: corrupt and missing never reach the detector
    assert (out / "manifest.csv").read_bytes() == manifest
    assert len(read_rows(out / "skipped.csv")) == 1 + 3

    # another number of frames into the same OUT_DIR is refused, with a one-line error
    assert main(args[:3] + ["--frames-per-video", "1"]) == 2


def test_journal_line_cut_short_is_redone(dfdc_dir, tmp_path, detector, monkeypatch):
    counting = CountingDetector(detector)
    monkeypatch.setattr("deepfake_kd.pipeline.faces.FaceDetector", lambda: counting)
    out = tmp_path / "crops"
    args = ["prepare-dfdc", str(dfdc_dir), str(out), "--limit", "2", "--no-progress"]
    assert main(args) == 0
    journal = out / "done.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing the 2nd line
    assert main(args) == 0
    assert counting.calls == 3
    assert [row[0] for row in read_rows(out / "manifest.csv")[1:]] == [
        "fake/alphafake_0006.jpg", "real/alpha_0006.jpg"]  # one frame: the middle one


def test_listing_groups_families_and_balances(dfdc_dir):
    videos = dfdc_videos(dfdc_dir)
    assert [v.name for v in videos] == ["alpha.mp4", "alphafake.mp4", "corrupt.mp4",
                                        "bravo.mp4", "bravofake.mp4", "missing.mp4",
                                        "noface.mp4"]
    assert [v.source for v in videos] == ["alpha"] * 3 + ["bravo"] * 3 + ["noface"]
    assert videos[0].path == dfdc_dir / "dfdc_train_part_0" / "alpha.mp4"
    balanced = dfdc_videos(dfdc_dir, fakes_per_source=1)
    assert [v.label for v in balanced] == ["real", "fake", "real", "fake", "real"]
    assert balanced == dfdc_videos(dfdc_dir, fakes_per_source=1)


def test_bad_metadata_is_left_out(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metadata.json").write_text("{not json")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metadata.json").write_text(json.dumps(
        {"x.mp4": {"label": "REAL"}, "y.mp4": {"label": "MAYBE"}, "z.mp4": "FAKE"}))
    warnings = []
    assert [v.name for v in dfdc_videos(tmp_path, warn=warnings.append)] == ["x.mp4"]
    assert len(warnings) == 3
    assert main(["prepare-dfdc", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2


def face(track: int, side: float, prob: float = 0.99) -> Face:
    return Face(box=(0.0, 0.0, side, side), prob=prob, track_id=track,
                crop=np.zeros((2, 2, 3), np.uint8))


def test_main_faces():
    """The largest face of each frame, the more probable of equal ones; no face, no entry."""
    frames = [[face(0, 80), face(1, 200)], [], [face(0, 82, 0.95), face(2, 82, 0.99)]]
    assert [(i, f.track_id) for i, f in main_faces(frames)] == [(0, 1), (2, 2)]
    assert main_faces([[], []]) == []
