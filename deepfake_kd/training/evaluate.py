"""Evaluation of models on face crops and on labelled videos (the `evaluate` command's work;
the metrics themselves are in `metrics`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..errors import DeepfakeKDError
from ..models import FaceClassifier, predict_crops
from ..pipeline.analysis import analyze_video
from ..pipeline.faces import FaceDetector
from .data import DEGRADATIONS, LABELS, degrade_crops
from .metrics import binary_metrics, paired_auc_difference, real_alarm_figures


def evaluate_videos(models: dict[str, FaceClassifier], folder: str | Path, *, num_frames: int,
                    threshold: float) -> dict:
    """Video-level figures through the full pipeline, for a folder with labels.csv (file,label).

    A clip's score is its video probability (max over face tracks of the mean face score), its
    prediction the verdict at `threshold`; clips without a face count as predicted real."""
    folder = Path(folder)
    with (folder / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    detector = FaceDetector()
    labels, scores, clips = [], {name: [] for name in models}, []
    for row in rows:
        result = analyze_video(folder / row["file"], models, num_frames=num_frames,
                               threshold=threshold, detector=detector)
        labels.append(LABELS[row["label"].strip().lower()])
        clip = {"file": row["file"], "label": row["label"], "no_face": result.no_face}
        for name, model_result in result.models.items():
            prob = model_result.video_prob if model_result.video_prob is not None else 0.0
            scores[name].append(prob)
            clip[name] = {"video_prob": model_result.video_prob, "verdict": model_result.verdict}
        clips.append(clip)
    return {"clips": clips,
            "metrics": {name: binary_metrics(labels, s, threshold=threshold)
                        for name, s in scores.items()}}


def crop_report(models: dict[str, FaceClassifier], crops: np.ndarray, labels: np.ndarray, *,
                threshold: float, conditions=("clean", *DEGRADATIONS),
                pairs: Sequence[tuple[str, str]] = ()) -> tuple[dict, dict]:
    """Per model and condition (clean, then each deterministic degradation of data.DEGRADATIONS):
    AUC, accuracy, F1, log loss, and the real-crop alarm figures at 0.5 and at `threshold`; and
    per pair (a, b) of `pairs`, "b - a": AUC(b) - AUC(a) per condition with its paired-bootstrap
    interval. Each degraded set is made once and scored by every model, then dropped."""
    report: dict = {name: {} for name in models}
    paired: dict = {f"{b} - {a}": {} for a, b in pairs}
    for condition in conditions:
        images = crops if condition == "clean" else degrade_crops(crops, condition)
        probs = {name: predict_crops(model, images, progress=True)
                 for name, model in models.items()}
        for name in models:
            report[name][condition] = {
                **binary_metrics(labels, probs[name]),
                **real_alarm_figures(labels, probs[name], thresholds=(0.5, threshold))}
        for a, b in pairs:
            paired[f"{b} - {a}"][condition] = paired_auc_difference(labels, probs[a], probs[b])
    return report, paired


def format_robustness(report: dict, *, threshold: float) -> str:
    key = f"reals_fake_at_{threshold:g}"
    lines = [f"robustness (reals called fake at 0.5 / {threshold:g}):",
             f"{'model':<10} {'condition':<10} {'AUC':>7} {'dAUC':>7} {'log loss':>9} "
             f"{'reals>0.5':>9} {'reals>' + format(threshold, 'g'):>10} {'mean p':>7}"]
    for name, conditions in report.items():
        clean = conditions.get("clean", {}).get("auc", float("nan"))
        for condition, m in conditions.items():
            lines.append(f"{name:<10} {condition:<10} {m['auc']:>7.4f} {m['auc'] - clean:>+7.4f} "
                         f"{m['log_loss']:>9.4f} {m['reals_fake_at_0.5']:>9.1%} {m[key]:>10.1%} "
                         f"{m['reals_mean_p_fake']:>7.3f}")
    return "\n".join(lines)


def reencode(src: str | Path, dst: str | Path, *, short_side: int = 480, crf: int = 28) -> Path:
    """`src` re-encoded as H.264 with its shorter side `short_side` px (even sizes, same frame
    rate, upright pixels), as a platform serves a 480p copy of an upload: the robustness
    report runs the full pipeline on such copies of the development clips."""
    import av  # PyAV: decodes and encodes without a separate FFmpeg install

    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream_in = source.streams.video[0]
        stream = None
        for frame in source.decode(stream_in):
            image = frame.to_ndarray(format="rgb24")
            turns = -int(getattr(frame, "rotation", 0) or 0) // 90 % 4  # display matrix
            image = np.ascontiguousarray(np.rot90(image, turns)) if turns else image
            if stream is None:
                h, w = image.shape[:2]
                scale = short_side / min(h, w)
                size = (round(w * scale / 2) * 2, round(h * scale / 2) * 2)
                stream = out.add_stream("libx264", rate=stream_in.average_rate or 30)
                stream.width, stream.height = size
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(resized, format="rgb24")))
        if stream is None:
            raise DeepfakeKDError(f"{src}: no video frame to re-encode")
        out.mux(stream.encode())
    return Path(dst)


def reencoded_folder(folder: str | Path, out_dir: str | Path, *, short_side: int = 480) -> Path:
    """A copy of a labelled clip folder (labels.csv) with every clip re-encoded at `short_side`
    px; clips already made are reused."""
    folder, out_dir = Path(folder), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (folder / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        target = out_dir / row["file"]
        if not target.is_file():
            partial = target.with_name(f"partial-{target.stem}.mp4")
            reencode(folder / row["file"], partial, short_side=short_side).replace(target)
    (out_dir / "labels.csv").write_text((folder / "labels.csv").read_text())
    return out_dir


def format_metrics(title: str, metrics: dict[str, dict[str, float]]) -> str:
    lines = [title, f"{'model':<10} {'AUC':>7} {'accuracy':>9} {'F1':>7} {'log loss':>9} {'n':>6}"]
    for name, m in metrics.items():
        lines.append(f"{name:<10} {m['auc']:>7.4f} {m['accuracy']:>9.4f} {m['f1']:>7.4f} "
                     f"{m['log_loss']:>9.4f} {m['n']:>6}")
    return "\n".join(lines)


def format_paired(paired: dict) -> str:
    lines = ["paired differences (same crops; 95% interval from a paired bootstrap):"]
    for pair, conditions in paired.items():
        for condition, d in conditions.items():
            low, high = d["ci95"]
            lines.append(f"{pair:<22} {condition:<10} AUC {d['auc_difference']:+.4f} "
                         f"[{low:+.4f}, {high:+.4f}]")
    return "\n".join(lines)
