"""Evaluation of models on face crops and on labelled videos (the `evaluate` command's work;
the metrics themselves are in `metrics`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..models import FaceClassifier, predict_crops
from ..pipeline.analysis import analyze_video
from ..pipeline.faces import FaceDetector
from .data import LABELS
from .metrics import binary_metrics


def evaluate_crops(models: dict[str, FaceClassifier], crops: np.ndarray, labels: np.ndarray
                   ) -> dict[str, dict[str, float]]:
    """Per-crop metrics of each model on the same crops."""
    return {name: binary_metrics(labels, predict_crops(model, crops, progress=True))
            for name, model in models.items()}


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


def format_metrics(title: str, metrics: dict[str, dict[str, float]]) -> str:
    lines = [title, f"{'model':<10} {'AUC':>7} {'accuracy':>9} {'F1':>7} {'log loss':>9} {'n':>6}"]
    for name, m in metrics.items():
        lines.append(f"{name:<10} {m['auc']:>7.4f} {m['accuracy']:>9.4f} {m['f1']:>7.4f} "
                     f"{m['log_loss']:>9.4f} {m['n']:>6}")
    return "\n".join(lines)
