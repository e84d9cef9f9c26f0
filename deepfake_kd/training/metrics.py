"""Binary metrics of fake probabilities: AUC (the rank statistic, ties counted half),
accuracy, F1 and log loss."""

from __future__ import annotations

import numpy as np


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


def real_alarm_figures(labels, probs, *, thresholds) -> dict[str, float]:
    """What a user with a real clip meets: the share of real crops called fake at each threshold,
    and the mean fake probability of real crops."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    real = probs[labels == 0]
    figures = {f"reals_fake_at_{t:g}": float((real > t).mean()) if len(real) else float("nan")
               for t in thresholds}
    figures["reals_mean_p_fake"] = float(real.mean()) if len(real) else float("nan")
    return figures


def paired_auc_difference(labels, probs_a, probs_b, *, resamples: int = 1000, seed: int = 0
                          ) -> dict[str, float | list[float]]:
    """AUC(b) - AUC(a) on the same samples, with a 95% interval from a paired bootstrap: the
    samples are drawn with replacement `resamples` times and both models scored on each draw.
    Why paired: two models scored on the same 2,400 crops make mostly the same mistakes, so their
    difference is far less noisy than either AUC alone (about 0.006 each here); an interval that
    excludes 0 says the gap is not the luck of which crops are in the set. It says nothing of
    training noise: that is the seed spread."""
    labels = np.asarray(labels, dtype=int)
    a, b = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    if not len(labels) == len(a) == len(b):
        raise ValueError(f"one probability per label from each model: {len(labels)} labels, "
                         f"{len(a)} and {len(b)} probabilities")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(0, len(labels), len(labels))
        draws.append(roc_auc(labels[i], b[i]) - roc_auc(labels[i], a[i]))
    low, high = np.nanpercentile(draws, [2.5, 97.5]) if resamples else (np.nan, np.nan)
    return {"auc_difference": roc_auc(labels, b) - roc_auc(labels, a),
            "ci95": [float(low), float(high)], "resamples": resamples}
