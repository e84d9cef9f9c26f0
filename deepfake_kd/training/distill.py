"""Knowledge distillation (Hinton et al., 2015) for single-logit detectors; the `distill` command.

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

import argparse
import hashlib
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbone_cache import cached_trunk_maps
from .data import Augment
from .evaluate import binary_metrics, predict_crops
from .models import FaceClassifier, StudentCNN, TinyEfficientNet, load_model
from .train import (CropFeed, MapFeed, add_fit_arguments, feed_logits, file_logger, fit,
                    fit_config, freeze_early_stages, hard_loss, imagenet_lite0_state_dict,
                    init_trunks_from, load_split)

STUDENTS: dict[str, type[FaceClassifier]] = {"tiny-efficientnet": TinyEfficientNet,
                                             "student-cnn": StudentCNN}


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    """Per-sample KD loss [B] for single-logit (binary) models."""
    assert student_logits.shape == teacher_logits.shape == labels.shape, "one logit per sample"
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
        if hasattr(teacher, "trunks"):
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
    digest.update(np.ascontiguousarray(crops[:: max(1, len(crops) // 64)]).tobytes())
    path = Path(cache_dir) / f"teacher-logits-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    logits = teacher_logits(teacher, crops, cache_dir=cache_dir, bf16=bf16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), logits)
    path.with_suffix(".tmp.npy").replace(path)  # a concurrent run never reads half a file
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


def run_distill(args: argparse.Namespace) -> int:
    out = Path(args.out)
    log = file_logger(out / "train.log")
    log(f"distill {json.dumps(vars(args), default=str)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    train_crops, train_labels = load_split(args.manifest, "train", cache_dir=args.cache_dir,
                                           limit=args.limit)
    val_crops, val_labels = load_split(args.manifest, "val", cache_dir=args.cache_dir,
                                       limit=args.limit)
    student = STUDENTS[args.arch](**(json.loads(args.model_kwargs) if args.model_kwargs else {}))
    if args.init == "imagenet-lite0":
        log(f"initialised {init_trunks_from(student, imagenet_lite0_state_dict())} backbone "
            "tensors from imagenet-lite0")
    frozen = freeze_early_stages(student, args.trainable_from_stage)
    targets = {"label": train_labels}
    if args.alpha < 1.0:
        teacher = load_model(args.teacher)
        targets["teacher_logit"] = cached_teacher_logits(
            args.teacher, teacher, train_crops, Path(args.cache_dir), bf16=args.bf16)
        teacher_auc = binary_metrics(train_labels, 1 / (1 + np.exp(-targets["teacher_logit"])))
        log(f"teacher on the train crops: {json.dumps(teacher_auc)}")
        loss_fn = partial(kd_loss_fn, alpha=args.alpha, temperature=args.temperature)
    else:  # the ablation: the same student and recipe without the teacher
        loss_fn = hard_loss
    log(f"{type(student).__name__}: {student.num_parameters():,} parameters; alpha={args.alpha} "
        f"T={args.temperature}")
    size = student.input_size
    state = fit(student, train=CropFeed(resize_crops(train_crops, size), augment=Augment()),
                train_targets=targets, val=CropFeed(resize_crops(val_crops, size)),
                val_labels=val_labels, out_dir=out,
                config=fit_config(args), loss_fn=loss_fn, frozen=frozen, log=log)
    best = load_model(str(out / "best"))
    final = binary_metrics(val_labels, predict_crops(best, val_crops))
    log(f"done: best student val {json.dumps(final)} after {state.seconds / 60:.1f} min")
    (out / "result.json").write_text(json.dumps(
        {"alpha": args.alpha, "temperature": args.temperature, "val": final,
         "minutes": state.seconds / 60, "images": state.images}, indent=1))
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("distill", help="distil the student from a trained teacher")
    parser.add_argument("--teacher", default="weights/teacher", help="teacher folder or Hub id")
    add_fit_arguments(parser, lr=1e-3, batch_size=128)
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the hard-label loss (1.0: no teacher, the ablation)")
    parser.add_argument("--temperature", type=float, default=2.0,
                        help="softening of both logits (default 2: val AUC 0.868 vs 0.866 at 4 "
                             "in this project's sweep, 0.703 vs 0.690 in the previous one)")
    parser.add_argument("--arch", choices=sorted(STUDENTS), default="tiny-efficientnet")
    parser.add_argument("--init", choices=["imagenet-lite0", "none"], default="imagenet-lite0",
                        help="backbone initialisation of a tiny-efficientnet student")
    parser.add_argument("--trainable-from-stage", type=int, default=2,
                        help="freeze the stem and backbone stages below this one (0: train all; "
                             "measured on 1 thread: 17 img/s with all, 43 with stages 0-1 "
                             "frozen)")
    parser.add_argument("--model-kwargs", default=None,
                        help="JSON of student arguments, e.g. '{\"head_channels\": 256}'")
    parser.set_defaults(run=run_distill)
