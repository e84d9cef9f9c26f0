"""The training commands: `train-teacher` (the teacher, or the baseline) and `distill` (the
student, from a trained teacher's logits for the views it sees; alpha 1 is the no-teacher
ablation). What they run is `training.train` and `training.distill`."""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DeepfakeKDError
from ..models import load_model, predict_crops
from ..models.registry import architecture
from ..pipeline.runtime import RUNTIMES, accelerate
from ..pipeline.tta import TTAS, with_tta
from ..roles import ROLES, TEACHER, short_path
from ..training.backbone_cache import cached_trunk_maps
from ..training.data import Augment, class_balance_weights, load_split
from ..training.distill import (
    FeatureDistillation,
    PreLogits,
    cached_view_features,
    cached_view_logits,
    cached_views,
    kd_loss_fn,
    resize_crops,
)
from ..training.metrics import binary_metrics
from ..training.train import (
    CropFeed,
    FitConfig,
    MapFeed,
    ViewFeed,
    fit,
    freeze_early_stages,
    freeze_prefixes,
    hard_loss,
    imagenet_lite0_state_dict,
    init_embedding_as_pooled_pca,
    init_trunks_from,
    resolve_device,
    trained_trunk_state_dict,
    trunks_frozen,
)

TEACHER_ARCHITECTURES = ["cross-efficient-vit", "efficientnet-classifier"]
STUDENT_ARCHITECTURES = ["student-cnn", "tiny-efficientnet"]


def file_logger(path: Path) -> Callable[[str], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        with path.open("a") as f:
            f.write(line + "\n")

    return log


def add_fit_arguments(parser: argparse.ArgumentParser, *, lr: float, batch_size: int) -> None:
    parser.add_argument("--manifest", required=True,
                        help="manifest CSV (file,label,source,split) or folder with real/ fake/")
    parser.add_argument("--out", required=True, help="run folder: log, checkpoint, best/")
    parser.add_argument("--cache-dir", default="cache", help="where decoded crops are cached")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock training budget (overrides --epochs for the schedule)")
    parser.add_argument("--eval-every-minutes", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--backbone-lr", type=float, default=None,
                        help="learning rate of the EfficientNet backbones (default: --lr)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--low-res", type=int, default=None, metavar="PX",
                        help="train the first --low-res-fraction of the schedule at PX (e.g. "
                             "160), the rest at the model's own input size")
    parser.add_argument("--low-res-fraction", type=float, default=0.7)
    parser.add_argument("--device", default="auto",
                        help="auto (the GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-class-balance", action="store_true",
                        help="plain mean loss instead of weighting real and fake crops equally")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N crops of each split (smoke tests)")


def fit_config(args: argparse.Namespace) -> FitConfig:
    return FitConfig(batch_size=args.batch_size, lr=args.lr, backbone_lr=args.backbone_lr,
                     weight_decay=args.weight_decay,
                     epochs=args.epochs, minutes=args.minutes,
                     eval_every_minutes=args.eval_every_minutes, seed=args.seed,
                     threads=args.threads, bf16=args.bf16, device=args.device,
                     low_res=args.low_res, low_res_fraction=args.low_res_fraction)


def run_train_teacher(args: argparse.Namespace) -> int:
    out = Path(args.out)
    log = file_logger(out / "train.log")
    log(f"train-teacher {json.dumps(vars(args), default=str)}")
    model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if args.from_model:
        model = load_model(args.from_model)
        if not isinstance(model, architecture(args.arch)):
            raise DeepfakeKDError(f"{args.from_model} holds a {type(model).__name__}, "
                                  f"not a {args.arch}")
        log(f"all weights from {args.from_model}")
    else:
        model = architecture(args.arch)(backbone=args.backbone, **model_kwargs)
    if args.init != "none" and not args.from_model:
        state = imagenet_lite0_state_dict() if args.init == "imagenet-lite0" \
            else trained_trunk_state_dict(args.init)
        log(f"initialised {init_trunks_from(model, state)} backbone tensors from {args.init}")
    frozen = freeze_early_stages(model, args.trainable_from_stage)
    if args.freeze:
        frozen = list({id(m): m for m in frozen + freeze_prefixes(model, args.freeze)}.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{type(model).__name__}: {model.num_parameters():,} parameters, {trainable:,} trainable")
    train_crops, train_labels = load_split(args.manifest, "train", cache_dir=args.cache_dir,
                                           limit=args.limit)
    val_crops, val_labels = load_split(args.manifest, "val", cache_dir=args.cache_dir,
                                       limit=args.limit)
    log(f"{len(train_crops)} train crops, {len(val_crops)} val crops")
    if trunks_frozen(model):  # the backbones' maps never change: compute them once
        if args.threads:
            torch.set_num_threads(args.threads)
        train = MapFeed(cached_trunk_maps(model, train_crops, cache_dir=args.cache_dir))
        val = MapFeed(cached_trunk_maps(model, val_crops, cache_dir=args.cache_dir))
        if args.pooled_embedding_init:
            kept = init_embedding_as_pooled_pca(model.sm_embedder, train.maps[0])
            log(f"small patch embedding = pooling + PCA ({kept:.1%} of the pooled variance)")
    else:
        train, val = CropFeed(train_crops, augment=Augment()), CropFeed(val_crops)
    targets = {"label": train_labels}
    if not args.no_class_balance:
        targets["weight"] = class_balance_weights(train_labels)
        log(f"class-balanced loss: {np.bincount(train_labels, minlength=2).tolist()} "
            "real/fake crops weighted to equal totals")
    state = fit(model, train=train, train_targets=targets, val=val,
                val_labels=val_labels, out_dir=out, config=fit_config(args), frozen=frozen,
                log=log)
    log(f"done: best val AUC {state.best_auc:.4f} after {state.seconds / 60:.1f} min, "
        f"{state.images / max(state.seconds, 1e-9):.1f} img/s; best model in {out / 'best'}")
    return 0


def add_cli(subparsers) -> None:
    add_train_teacher_cli(subparsers)
    add_distill_cli(subparsers)


def add_train_teacher_cli(subparsers) -> None:
    parser = subparsers.add_parser("train-teacher", help="train the teacher (or the baseline)")
    add_fit_arguments(parser, lr=3e-4, batch_size=32)
    parser.add_argument("--arch", choices=TEACHER_ARCHITECTURES, default="cross-efficient-vit")
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="timm EfficientNet name for the branches")
    parser.add_argument("--init", default="imagenet-lite0", metavar="{imagenet-lite0,none,REF}",
                        help="backbone initialisation: Lite0 ImageNet weights, none, or the "
                             "trunk of a trained model (folder or Hub id, e.g. the baseline)")
    parser.add_argument("--trainable-from-stage", type=int, default=4,
                        help="freeze stem and backbone stages below this one (0: train all)")
    parser.add_argument("--from-model", default=None, metavar="REF",
                        help="start from all weights of a trained model of this architecture "
                             "(e.g. weights/teacher) instead of --init")
    parser.add_argument("--freeze", nargs="+", default=[], metavar="PREFIX",
                        help="freeze the parameters whose names start with PREFIX (e.g. "
                             "sm_embedder lg_embedder encoder.layers.0.0). With every backbone "
                             "frozen, their maps are computed once (cached in --cache-dir) and "
                             "training runs on them")
    parser.add_argument("--pooled-embedding-init", action="store_true",
                        help="with frozen backbones: start the teacher's small patch embedding as "
                             "average pooling + the pooled maps' principal directions")
    parser.add_argument("--model-kwargs", default=None,
                        help="JSON of extra model arguments (e.g. a smaller test model)")
    parser.set_defaults(run=run_train_teacher)


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
    student = architecture(args.arch)(**(json.loads(args.model_kwargs) if args.model_kwargs
                                         else {}))
    if args.init == "imagenet-lite0":
        log(f"initialised {init_trunks_from(student, imagenet_lite0_state_dict())} backbone "
            "tensors from imagenet-lite0")
    frozen = freeze_early_stages(student, args.trainable_from_stage)
    views = ViewFeed(train_crops, Augment(), views=args.views, seed=args.view_seed,
                     mixed=args.mixed_views)
    targets = {"label": views.view_targets(train_labels)}  # a blend's label: the mix of two
    if not args.no_class_balance:
        targets["weight"] = views.view_targets(class_balance_weights(train_labels))
    size = student.input_size
    if args.alpha < 1.0 or args.feature_weight > 0:
        device = resolve_device(args.device)
        eager_teacher = load_model(args.teacher).to(device)

        def run_teacher(model):  # on a CPU 2.5x eager (2 cores: 18.7 vs 46.6 ms a face, 224 px)
            model = accelerate(model, args.teacher_runtime) if device.type == "cpu" else model
            return with_tta(model, args.teacher_tta)

        targets["teacher_logit"] = cached_view_logits(
            args.teacher, run_teacher(eager_teacher), views, Path(args.cache_dir),
            bf16=args.bf16, device_type=device.type,
            batch_size=64 if device.type == "cpu" else 512, log=log)
        plain = targets["teacher_logit"][:, :args.views]
        teacher_auc = binary_metrics(np.repeat(train_labels, args.views),
                                     1 / (1 + np.exp(-plain.ravel())))
        log(f"teacher on the plain training views: {json.dumps(teacher_auc)}")
        loss_fn = partial(kd_loss_fn, alpha=args.alpha, temperature=args.temperature)
        if args.feature_weight > 0:
            features = cached_view_features(args.teacher, run_teacher(PreLogits(eager_teacher)),
                                            views, Path(args.cache_dir), log=log)
            loss_fn = FeatureDistillation.for_student(
                student, features, weight=args.feature_weight, alpha=args.alpha,
                temperature=args.temperature)
            targets["teacher_features"] = features
    else:  # the ablation: the same student and recipe without the teacher
        loss_fn = hard_loss
    log(f"{type(student).__name__}: {student.num_parameters():,} parameters; alpha={args.alpha} "
        f"T={args.temperature} feature weight={args.feature_weight}")
    made = cached_views(views, size, Path(args.cache_dir), log=log)  # shared by a sweep's runs
    state = fit(student, train=made, train_targets=targets,
                val=CropFeed(resize_crops(val_crops, size)),
                val_labels=val_labels, out_dir=out,
                config=fit_config(args), loss_fn=loss_fn, frozen=frozen, log=log)
    best = load_model(str(out / "best"))
    final = binary_metrics(val_labels, predict_crops(best, val_crops))
    log(f"done: best student val {json.dumps(final)} after {state.seconds / 60:.1f} min")
    (out / "result.json").write_text(json.dumps(
        {"alpha": args.alpha, "temperature": args.temperature,
         "feature_weight": args.feature_weight, "val": final,
         "views": args.views, "mixed_views": args.mixed_views, "seed": args.seed,
         "minutes": state.seconds / 60,
         "images": state.images}, indent=1))
    return 0


def add_distill_cli(subparsers) -> None:
    parser = subparsers.add_parser("distill", help="distil the student from a trained teacher")
    parser.add_argument("--teacher", default=short_path(str(ROLES[TEACHER].default)),
                        help="teacher folder or Hub id")
    add_fit_arguments(parser, lr=1e-3, batch_size=128)
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the hard-label loss (1.0: no teacher, the ablation)")
    parser.add_argument("--teacher-runtime", choices=RUNTIMES, default="onnx",
                        help="how the teacher scores the views on a CPU (on a GPU: eager)")
    parser.add_argument("--teacher-tta", choices=TTAS, default="none",
                        help="test-time augmentation of the teacher's targets: flip averages "
                             "its logit (and features) on each view and the view's mirror image "
                             "(twice the scoring time, cached apart)")
    parser.add_argument("--temperature", type=float, default=2.0,
                        help="softening of both logits (default 2; the sweep behind it is in "
                             "weights/student/README.md)")
    parser.add_argument("--feature-weight", type=float, default=0.0,
                        help="weight of feature distillation: the student's pre-logit features, "
                             "through a trained linear projection, match the teacher's "
                             "(standardised) on the same view; 0: logits only")
    parser.add_argument("--views", type=int, default=4,
                        help="fixed augmented views per training crop; the teacher scores each "
                             "once and the student learns its logit for the view it draws")
    parser.add_argument("--mixed-views", type=int, default=0,
                        help="more views per crop, each a mixup blend of two crops' views, "
                             "scored by the teacher like the others (the no-teacher ablation "
                             "learns the blend of the two labels)")
    parser.add_argument("--view-seed", type=int, default=0,
                        help="seed of the views (kept apart from --seed, so runs of several "
                             "seeds and the no-teacher ablation see the same views)")
    parser.add_argument("--arch", choices=STUDENT_ARCHITECTURES, default="tiny-efficientnet")
    parser.add_argument("--init", choices=["imagenet-lite0", "none"], default="imagenet-lite0",
                        help="backbone initialisation of a tiny-efficientnet student")
    parser.add_argument("--trainable-from-stage", type=int, default=2,
                        help="freeze the stem and backbone stages below this one (0: train all; "
                             "what it saves: weights/student/README.md)")
    parser.add_argument("--model-kwargs", default=None,
                        help="JSON of student arguments, e.g. '{\"head_channels\": 256}'")
    parser.set_defaults(run=run_distill)
