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

One logit carries one number per image, so `FeatureDistillation` adds the teacher's pre-logit
features (576 numbers per image for the Cross Efficient ViT) as a target, through a linear
projection trained with the student (FitNets, Romero et al., 2015, on the last features; the
projector as in Miles & Mikolajczyk, 2024).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import FaceClassifier
from ..util import atomic_path, crops_digest
from .train import CropFeed, TrainableLoss, ViewFeed, feed_forward


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


def kd_loss_fn(outputs, targets, *, alpha: float, temperature: float):
    return distillation_loss(outputs["logit"], targets["teacher_logit"], targets["label"],
                             alpha=alpha, temperature=temperature)


class FeatureDistillation(TrainableLoss):
    """kd_loss_fn + weight * mean over dims of (projection(student features) - teacher's)^2,
    per sample. The teacher's features are standardised per dimension (their training mean and
    spread, `mean` and `std`), so the term starts near 1 whatever their scale; the projection
    (student dim -> teacher dim) is trained with the student and dropped after training."""

    def __init__(self, *, student_dim: int, teacher_mean: np.ndarray, teacher_std: np.ndarray,
                 weight: float, alpha: float, temperature: float):
        super().__init__()
        assert teacher_mean.shape == teacher_std.shape and teacher_mean.ndim == 1, \
            (teacher_mean.shape, teacher_std.shape)
        self.projection = torch.nn.Linear(student_dim, len(teacher_mean))
        self.register_buffer("teacher_mean", torch.as_tensor(teacher_mean, dtype=torch.float32))
        self.register_buffer("teacher_std", torch.as_tensor(teacher_std, dtype=torch.float32)
                             .clamp_min(1e-6))
        self.weight, self.alpha, self.temperature = weight, alpha, temperature

    @classmethod
    def for_student(cls, student: FaceClassifier, teacher_features: np.ndarray, *,
                    weight: float, alpha: float, temperature: float) -> FeatureDistillation:
        """The loss for `student`, standardising the teacher's features [..., D] by their own
        mean and spread."""
        flat = teacher_features.reshape(-1, teacher_features.shape[-1])
        mean = flat.mean(0, dtype=np.float64)
        std = np.sqrt(np.maximum(np.square(flat, dtype=np.float64).mean(0) - mean**2, 0))
        size = student.input_size
        with torch.no_grad():
            student_dim = student.eval().pre_logits(torch.zeros(1, 3, size, size)).shape[-1]
        return cls(student_dim=student_dim, teacher_mean=mean.astype(np.float32),
                   teacher_std=std.astype(np.float32), weight=weight, alpha=alpha,
                   temperature=temperature)

    def feature_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        assert student.ndim == teacher.ndim == 2 and len(student) == len(teacher), \
            (student.shape, teacher.shape)
        target = (teacher - self.teacher_mean) / self.teacher_std
        return (self.projection(student) - target).pow(2).mean(-1)

    def forward(self, outputs, targets):
        return kd_loss_fn(outputs, targets, alpha=self.alpha, temperature=self.temperature) \
            + self.weight * self.feature_loss(outputs["pre_logits"], targets["teacher_features"])


def cached_view_logits(teacher_ref: str, teacher: FaceClassifier, views: ViewFeed,
                       cache_dir: Path, *, bf16: bool = False, device_type: str = "cpu",
                       chunk: int = 2048, batch_size: int = 64, log=print) -> np.ndarray:
    """The teacher's logit for every view of every crop, plain and blended, float32
    [N, views.total]: the student's targets for the very images it sees (function matching).
    Running the teacher on augmented views, not on the clean crop, is the point: the
    augmentations (downscale, blur, JPEG, cut-out) change what a crop shows, and a clean-crop
    logit would teach the student to be sure where the teacher itself is not. Cached in chunks
    of `chunk` crops per view, keyed by the teacher's weights, the crops and the views' recipe,
    so a killed run resumes at the chunk it was in. `batch_size`: 64 suits a CPU; a GPU runs
    the teacher's many small kernels faster in larger batches. `bf16` autocasts on
    `device_type`, where the teacher runs (an autocast for another device type does nothing)."""
    key = teacher_views_key(teacher_ref, teacher, views, bf16)
    folder = Path(cache_dir) / f"teacher-views-{key}"

    def score(images: np.ndarray) -> np.ndarray:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            return feed_forward(teacher, CropFeed(images), batch_size=batch_size)

    out = np.empty((len(views), views.total), dtype=np.float32)
    return fill_per_view(views, folder, out, score, what="teacher logits", chunk=chunk, log=log)


def cached_view_features(teacher_ref: str, teacher: FaceClassifier, views: ViewFeed,
                         cache_dir: Path, *, chunk: int = 2048, batch_size: int = 64,
                         log=print) -> np.ndarray:
    """The teacher's pre-logit features (`FaceClassifier.pre_logits`) for every view of every
    crop, float16 [N, views.total, D] (34,655 crops, 4 views, 576 dims: 160 MB), cached like
    `cached_view_logits`. `teacher` may run in another runtime (`pipeline.runtime`, which
    exports `PreLogits(teacher)`): its forward must return the features."""
    key = teacher_views_key(teacher_ref, teacher, views, False)
    folder = Path(cache_dir) / f"teacher-features-{key}"

    def score(images: np.ndarray) -> np.ndarray:
        return feed_forward(teacher, CropFeed(images), batch_size=batch_size).astype(np.float16)

    dim = score(np.zeros((1, teacher.input_size, teacher.input_size, 3), np.uint8)).shape[-1]
    out = np.empty((len(views), views.total, dim), dtype=np.float16)
    return fill_per_view(views, folder, out, score, what="teacher features", chunk=chunk,
                         log=log)


class PreLogits(FaceClassifier):
    """`model` whose forward returns its pre-logit features [N, D], so a runtime that runs a
    forward (ONNX Runtime: 2.5x eager for the teacher on 2 cores) computes them."""

    def __init__(self, model: FaceClassifier):
        super().__init__(input_size=model.input_size, mean=model.mean, std=model.std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.pre_logits(x)


def teacher_views_key(teacher_ref: str, teacher: FaceClassifier, views: ViewFeed,
                      bf16: bool) -> str:
    """What fixes the teacher's outputs on the views: its weights (files' names, sizes and
    times), runtime, test-time augmentation and precision, and the views' pixels."""
    digest = hashlib.sha1(str(teacher_ref).encode())
    folder = Path(teacher_ref)
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        digest.update(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
    # ONNX Runtime: logits within 4e-5 of eager; no test-time augmentation: the key of before
    tta = "" if teacher.tta == "none" else f"|{teacher.tta}"
    digest.update(f"{views_key(views)}|{bf16}|{teacher.runtime}{tta}".encode())
    return digest.hexdigest()[:16]


def views_key(views: ViewFeed) -> str:
    """What fixes every view's pixels: the crops, the augmentation's recipe and the views' seed."""
    return f"{crops_digest(views.crops)}|{views.augment!r}|{views.seed}"


def cached_views(views: ViewFeed, size: int, cache_dir: Path, *, chunk: int = 2048,
                 log=print) -> ViewFeed:
    """`views` with every view made once and resized to the student's `size` (uint8, in memory
    [N, views, size, size, 3]; 1.9 GB for 34,655 crops, 2 views, 96 px). Why: augmenting a
    224 px crop costs more CPU than the tiny student's step on it, and the views are fixed
    anyway, so every run of a sweep (alphas, seeds, the ablation) would make the same images
    again. Cached in chunks like the teacher's logits, so a killed run resumes."""
    digest = hashlib.sha1(f"{views_key(views)}|{size}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"views-{size}px-{digest}"
    made = np.empty((len(views), views.views, size, size, 3), dtype=np.uint8)
    fill_per_view(views, folder, made, lambda images: resize_crops(images, size),
                  what=f"views at {size} px", chunk=chunk, log=log)
    return dataclasses.replace(views, made=made)


def fill_per_view(views: ViewFeed, folder: Path, out: np.ndarray, compute, *, what: str,
                  chunk: int, log) -> np.ndarray:
    """out[i, k] = compute(view k of crops i..)[i] for the first out.shape[1] views, made a chunk
    of `chunk` crops at a time from uint8 views [n, H, W, 3] and cached in `folder` one file per
    view and chunk (written whole or not at all), so a killed run resumes at the chunk it was in.
    Blends are named apart ("mixup{m}-of{views}"): their recipe depends on the plain views'
    number, and adding blends must not make the plain views' files stale."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(out.shape[1]):
        name = f"view{k}" if k < views.views else f"mixup{k - views.views}-of{views.views}"
        for start in range(0, len(views), chunk):
            path = folder / f"{name}-{start:07d}.npy"
            if not path.is_file():
                index = torch.arange(start, min(start + chunk, len(views)))
                images = views.images(index, torch.full_like(index, k))
                with atomic_path(path) as tmp:
                    np.save(tmp, compute(images.permute(0, 2, 3, 1).numpy()))
                log(f"{what}: view {k}, crops {start}-{start + len(index)} of {len(views)}")
            out[start:start + chunk, k] = np.load(path)
    return out


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

