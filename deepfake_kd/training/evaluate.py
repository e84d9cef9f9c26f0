"""Metrics (AUC, accuracy, F1, log loss) and the `evaluate` command for face crops and videos."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from .data import LABELS
from .models import FaceClassifier, default_reference, load_model


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve = P(score of a fake > score of a real), ties counted half."""
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(labels, probs, *, threshold: float = 0.5) -> dict[str, float]:
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    pred = (probs > threshold).astype(int)
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return {
        "auc": roc_auc(labels, probs),
        "accuracy": float((pred == labels).mean()),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "log_loss": float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()),
        "n": int(len(labels)),
    }


@torch.no_grad()
def predict_crops(model: FaceClassifier, crops: np.ndarray, *, batch_size: int = 64,
                  progress: bool = False) -> np.ndarray:
    """Fake probabilities for uint8 crops [N,H,W,3], through the model's own preprocessing."""
    model.eval()
    starts = range(0, len(crops), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"scoring {type(model).__name__}", unit="batch")
    out = [model.predict_proba(model.preprocess(np.asarray(crops[s:s + batch_size])))
           for s in starts]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


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
    from .analysis import analyze_video
    from .faces import FaceDetector

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


def run_evaluate(args: argparse.Namespace) -> int:
    from .train import load_split

    if args.threads:
        torch.set_num_threads(args.threads)
    models = {role: load_model(getattr(args, role) or default_reference(role))
              for role in ("teacher", "student")}
    report: dict = {"references": {role: getattr(args, role) or default_reference(role)
                                   for role in models}}
    if args.manifest:
        crops, labels = load_split(args.manifest, args.split, cache_dir=args.cache_dir,
                                   limit=args.limit)
        report["crops"] = {"manifest": str(args.manifest), "split": args.split,
                           "metrics": evaluate_crops(models, crops, labels)}
        print(format_metrics(f"face crops, split {args.split}:", report["crops"]["metrics"]))
    if args.videos:
        report["videos"] = evaluate_videos(models, args.videos, num_frames=args.frames,
                                           threshold=args.threshold)
        for clip in report["videos"]["clips"]:
            print(f"{clip['file']}: label {clip['label']}; " + ", ".join(
                f"{name} {clip[name]['verdict']} ({clip[name]['video_prob']})" for name in models))
        print(format_metrics(f"videos (threshold {args.threshold}):",
                             report["videos"]["metrics"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="AUC / accuracy / F1 / log loss of both models")
    parser.add_argument("--teacher", metavar="REF", help="default: the bundled weights/teacher")
    parser.add_argument("--student", metavar="REF", help="default: the bundled weights/student")
    parser.add_argument("--manifest", help="face crops: manifest CSV or real/ fake/ folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--videos", help="folder of clips with labels.csv (file,label)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.55)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.set_defaults(run=run_evaluate)
