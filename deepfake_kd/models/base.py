"""The one interface every detector model shares.

A model maps a batch of face crops to one logit each (`forward(x) -> [N]`); `predict_proba`
turns logits into fake probabilities; `preprocess` turns uint8 RGB crops into the input the model
expects, from the size and normalisation in its own config. A model built on EfficientNet trunks
names them in `trunks()` and computes its logits from their maps in `forward_from_features`
(training runs frozen trunks once, `training.backbone_cache`); a model without trunks keeps the
defaults (no trunks). A model also splits its forward pass at the features its logit is linear in
(timm's "pre-logits"): `classify(pre_logits(x)) == forward(x)`, which feature distillation
matches between teacher and student. A model behind another runtime (`pipeline.runtime`) gives
back the torch model with `unwrap()`. Callers (analysis, training, benchmark, app) never need
to know which model they hold, and never probe for attributes.

Persistence goes through `huggingface_hub.PyTorchModelHubMixin` (config.json) and
`weights` (safetensors only).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .weights import load_weights, save_weights, weights_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hub_mixin_kwargs(model_name: str) -> dict:
    """Class keywords for PyTorchModelHubMixin: what the Hub shows on a published model."""
    return dict(
        library_name="deepfake-kd",
        tags=["deepfake-detection", "knowledge-distillation", model_name],
        pipeline_tag="image-classification",
        license="mit",
    )


class FaceClassifier(nn.Module, PyTorchModelHubMixin):
    """Base of every detector: a binary real/fake classifier of face crops."""

    runtime = "eager"  # what runs forward; `pipeline.runtime.AcceleratedModel` says otherwise
    tta = "none"  # test-time augmentation; `pipeline.tta.FlipAveraged` says otherwise
    derived_keys: tuple[str, ...] = ()  # config keys of older releases, now `derived_config`

    def __init__(self, *, input_size: int, mean, std):
        super().__init__()
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if not len(self.mean) == len(self.std) == 3:
            raise ValueError(f"mean and std need one value per RGB channel, got {self.mean} "
                             f"and {self.std}")

    # --- the interface -----------------------------------------------------------------------

    def trunks(self) -> tuple[nn.Module, ...]:
        """The backbones whose maps `forward_from_features` takes, in its argument order;
        none by default."""
        return ()

    def forward_from_features(self, *maps: torch.Tensor) -> torch.Tensor:
        """Logits from the maps of `trunks()`; only for models that have trunks."""
        raise NotImplementedError(f"{type(self).__name__} has no trunks to take maps from")

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[N, D] features the logit is a linear function of (`classify`), from a preprocessed
        batch: what feature distillation matches (`training.distill`)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its pre-logit "
                                  "features: implement pre_logits and classify")

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [N] from `pre_logits` features [N, D]."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its pre-logit "
                                  "features: implement pre_logits and classify")

    def unwrap(self) -> FaceClassifier:
        """The torch model that holds the weights: the model itself, unless a runtime wraps it."""
        return self

    def derived_config(self) -> dict:
        """Values that earlier configs stored and that are now derived from the model itself
        (e.g. channel counts read from a trunk): a config may still carry them, but only with
        these values (`registry.load_model` checks)."""
        return {}

    @property
    def config(self) -> dict:
        """The constructor arguments the model was built with (what config.json stores)."""
        return dict(getattr(self, "_hub_mixin_config", None) or {})

    def check_input(self, x: torch.Tensor) -> None:
        """[N, 3, input_size, input_size]; in training mode any square size, so a schedule can
        run most steps at a lower resolution (the model must then accept it: see
        `CrossEfficientViT`, whose maps are resized to the size its patch embedding was built
        for)."""
        size = x.shape[-1] if self.training else self.input_size
        expected = (3, size, size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} expects [N, {expected}], "
                             f"got {tuple(x.shape)}")

    def preprocess(self, crops, *, size: int | None = None) -> torch.Tensor:
        """uint8 RGB crops (numpy [N,H,W,3] or tensor [N,3,H,W]) -> normalised float input, at
        the model's input size (or `size`, for training at a lower resolution)."""
        size = size or self.input_size
        x = torch.from_numpy(np.array(crops, dtype=np.uint8)).permute(0, 3, 1, 2) \
            if isinstance(crops, np.ndarray) else crops
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB crops [N,H,W,3] (numpy) or [N,3,H,W] (tensor), "
                             f"got {tuple(x.shape)}")
        x = x.float().div_(255.0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Fake probability per crop, from a preprocessed batch."""
        return torch.sigmoid(self(x).float())

    def num_parameters(self) -> int:
        """Parameters that forward uses: the modules hold nothing else."""
        return sum(p.numel() for p in self.parameters())

    # --- persistence: config.json from the mixin, weights as (sharded) safetensors only ---

    def _save_pretrained(self, save_directory: Path) -> None:
        save_weights(self.state_dict(), save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None,
                         force_download=False, local_files_only=False, token=None,
                         map_location="cpu", strict=True, **kwargs):
        model_kwargs = {k: v for k, v in kwargs.items() if k in cls.init_parameter_names()}
        model = cls(**model_kwargs)
        folder = weights_folder(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                local_files_only=local_files_only)
        load_weights(model, folder, strict=strict)
        return model.eval()

    @classmethod
    def init_parameter_names(cls) -> set[str]:
        return set(inspect.signature(cls.__init__).parameters) - {"self"}


def preprocessed_batches(model: FaceClassifier, crops, batch_size: int
                         ) -> Iterator[torch.Tensor]:
    """uint8 crops [N,H,W,3] (maybe memory-mapped) in model-ready batches of `batch_size`."""
    for start in range(0, len(crops), batch_size):
        yield model.preprocess(np.asarray(crops[start:start + batch_size]))


@torch.no_grad()
def predict_crops(model: FaceClassifier, crops, *, batch_size: int = 64,
                  progress: bool = False) -> np.ndarray:
    """Fake probabilities for uint8 crops [N,H,W,3], through the model's own preprocessing,
    in eval mode."""
    model.eval()
    batches = preprocessed_batches(model, crops, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(crops) // batch_size),
                       desc=f"scoring {type(model).__name__}", unit="batch")
    out = [model.predict_proba(x) for x in batches]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
