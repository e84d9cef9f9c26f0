"""Knowledge distillation (Hinton et al., 2015) for single-logit detectors (the `distill`
command is `tools.train`).

With one logit per sample the "softmax with temperature" is a sigmoid with temperature:
    hard = BCE(student, label)
    soft = T^2 * BCE(student / T, sigmoid(teacher / T))
    loss = alpha * hard + (1 - alpha) * soft
Every term is per sample; nothing normalises across the batch (a softmax over dim 0 of single
logits, seen in circulated KD code, would make a sample's target depend on its batch-mates).
The T^2 factor keeps the soft gradient, T * (sigmoid(s/T) - sigmoid(t/T)) ~ (s - t) / 4 for large
T, the same size whatever T is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import FaceClassifier
from ..util import atomic_path, crop_sample_bytes
from .backbone_cache import cached_trunk_maps
from .train import CropFeed, MapFeed, feed_logits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    """Per-sample KD loss [B] for single-logit (binary) models."""
    if not student_logits.shape == teacher_logits.shape == labels.shape:
        raise ValueError(f"one logit and one label per sample: student "
                         f"{tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}, "
                         f"labels {tuple(labels.shape)}")
    hard = F.binary_cross_entropy_with_logits(student_logits, labels, reduction="none")
    soft_target = torch.sigmoid(teacher_logits / temperature)
    soft = F.binary_cross_entropy_with_logits(student_logits / temperature, soft_target,
                                              reduction="none") * temperature**2
    return alpha * hard + (1 - alpha) * soft


def kd_loss_fn(logits, targets, *, alpha: float, temperature: float):
    return distillation_loss(logits, targets["teacher_logit"], targets["label"], alpha=alpha,
                             temperature=temperature)


def teacher_logits(teacher: FaceClassifier, crops: np.ndarray, *, cache_dir: Path,
                   bf16: bool = False) -> np.ndarray:
    """The teacher's logit for each clean crop, computed once and reused for every epoch.

    The student trains on augmented views of a crop (flip, small affine, colour, noise, JPEG)
    against this clean-crop logit: those augmentations are meant to keep the real/fake
    evidence, so the teacher's judgement of the clean crop stays a sound target, and running the
    teacher on every augmented view would cost more than the whole student training. A teacher
    with backbones runs from their cached maps (backbone_cache), which its own training with
    frozen backbones has already computed: float16 maps move a logit by about 1e-3."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if teacher.trunks():
            return feed_logits(teacher, MapFeed(cached_trunk_maps(teacher, crops,
                                                                  cache_dir=cache_dir)))
        return feed_logits(teacher, CropFeed(crops))


def cached_teacher_logits(teacher_ref: str, teacher: FaceClassifier, crops: np.ndarray,
                          cache_dir: Path, *, bf16: bool) -> np.ndarray:
    """Teacher logits for a crop set, cached on disk by (teacher weights, crops)."""
    folder_files = sorted(p for p in Path(teacher_ref).glob("*.safetensors")) \
        if Path(teacher_ref).is_dir() else []
    digest = hashlib.sha1(str(teacher_ref).encode())
    for path in folder_files:
        digest.update(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
    digest.update(f"{crops.shape}:{bf16}".encode())
    digest.update(crop_sample_bytes(crops))
    path = Path(cache_dir) / f"teacher-logits-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    logits = teacher_logits(teacher, crops, cache_dir=cache_dir, bf16=bf16)
    with atomic_path(path) as tmp:  # a concurrent run never reads half a file
        np.save(tmp, logits)
    return logits


def resize_crops(crops: np.ndarray, size: int, *, batch_size: int = 512) -> np.ndarray:
    """uint8 crops resized once to the student's input size, with the same antialiased bilinear
    resize its `preprocess` applies at inference, so augmentation runs on small images."""
    if crops.shape[1:3] == (size, size):
        return crops
    out = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(np.array(crops[start:start + batch_size]))
        x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[start:start + batch_size] = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out
