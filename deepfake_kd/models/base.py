"""The one interface every detector model shares, and its safetensors-only persistence.

A model maps a batch of face crops to one logit each (`forward(x) -> [N]`); `predict_proba`
turns logits into fake probabilities; `preprocess` turns uint8 RGB crops into the input the model
expects, from the size and normalisation in its own config. Callers (analysis, training,
benchmark, app) never need to know which model they hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, save_torch_state_dict
from safetensors.torch import load_file
from torch import nn

from ..errors import WeightsError

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_SHARD_BYTES = 45_000_000  # keeps every released file under the 50 MB limit for git
PART_MARKER = ".__part"  # a tensor larger than a shard is stored as row chunks `<key>.__part<i>`


def hub_mixin_kwargs(model_name: str) -> dict:
    """Class keywords for PyTorchModelHubMixin: what the Hub shows on a published model."""
    return dict(
        library_name="deepfake-kd",
        tags=["deepfake-detection", "knowledge-distillation", model_name],
        pipeline_tag="image-classification",
        license="mit",
    )


class FaceClassifier(nn.Module, PyTorchModelHubMixin):
    """Base of the teacher and the student: a binary real/fake classifier of face crops."""

    channel_order = "RGB"

    def __init__(self, *, input_size: int, mean, std):
        super().__init__()
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        assert len(self.mean) == len(self.std) == 3, "mean and std need one value per channel"

    def check_input(self, x: torch.Tensor) -> None:
        expected = (3, self.input_size, self.input_size)
        assert x.ndim == 4 and tuple(x.shape[1:]) == expected, (
            f"{type(self).__name__} expects [N, {expected}], got {tuple(x.shape)}")

    def preprocess(self, crops) -> torch.Tensor:
        """uint8 RGB crops (numpy [N,H,W,3] or tensor [N,3,H,W]) -> normalised float input."""
        x = torch.from_numpy(np.array(crops, dtype=np.uint8)).permute(0, 3, 1, 2) \
            if isinstance(crops, np.ndarray) else crops
        assert x.ndim == 4 and x.shape[1] == 3, f"expected RGB crops, got {tuple(x.shape)}"
        x = x.float().div_(255.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
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
        state = split_large_tensors(self.state_dict(), max_bytes=MAX_SHARD_BYTES)
        save_torch_state_dict(state, save_directory, max_shard_size=MAX_SHARD_BYTES)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None,
                         force_download=False, local_files_only=False, token=None,
                         map_location="cpu", strict=True, **kwargs):
        from .hub import weights_folder  # local import: hub imports this module

        model_kwargs = {k: v for k, v in kwargs.items() if k in cls._init_parameter_names()}
        model = cls(**model_kwargs)
        folder = weights_folder(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                local_files_only=local_files_only)
        load_weights(model, folder, strict=strict)
        return model.eval()

    @classmethod
    def _init_parameter_names(cls) -> set[str]:
        import inspect

        return set(inspect.signature(cls.__init__).parameters) - {"self"}


def split_large_tensors(state: dict[str, torch.Tensor], *, max_bytes: int
                        ) -> dict[str, torch.Tensor]:
    """Split tensors bigger than a shard into row chunks: safetensors cannot spread one tensor
    over two files, and the teacher's 75,264 x 384 patch embedding is 58 MB even in fp16."""
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        size = tensor.numel() * tensor.element_size()
        if size <= max_bytes or tensor.ndim == 0:
            out[key] = tensor
            continue
        for i, chunk in enumerate(tensor.chunk(-(-size // max_bytes), dim=0)):
            out[f"{key}{PART_MARKER}{i}"] = chunk.clone()  # own storage: one file each
    return out


def join_split_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `split_large_tensors`."""
    parts: dict[str, dict[int, torch.Tensor]] = {}
    out = {}
    for key, tensor in state.items():
        base, marker, index = key.rpartition(PART_MARKER)
        if marker and index.isdigit():
            parts.setdefault(base, {})[int(index)] = tensor
        else:
            out[key] = tensor
    for base, chunks in parts.items():
        if sorted(chunks) != list(range(len(chunks))):
            raise WeightsError(f"{base}: chunks {sorted(chunks)} are not complete")
        out[base] = torch.cat([chunks[i] for i in range(len(chunks))], dim=0)
    return out


def load_weights(model: nn.Module, folder: str | Path, *, strict: bool = True) -> None:
    """Load safetensors weights (one file or shards) into `model`; refuse pickles and mismatches."""
    folder = Path(folder)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{folder}: refusing pickle weight file(s) {', '.join(pickles)}; only safetensors are "
            "loaded. Remove them, or convert them to safetensors.")
    index_path = folder / WEIGHTS_INDEX_FILE
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        shards = sorted(set(index["weight_map"].values()))
    elif (folder / WEIGHTS_FILE).is_file():
        shards = [WEIGHTS_FILE]
    else:
        raise WeightsError(f"{folder}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}; "
                           "save the model with save_pretrained() or fetch its weights folder.")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            raise WeightsError(f"{path}: shard listed in {WEIGHTS_INDEX_FILE} is missing; "
                               "download the weights folder again.")
        try:
            state.update(load_file(path))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise WeightsError(f"{path}: not a readable safetensors file ({exc}); "
                               "download the weights folder again.") from exc
    state = join_split_tensors(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if wrong_shape or (strict and (missing or unexpected)):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsError(
            f"{folder}: weights do not match {type(model).__name__} as configured by its "
            f"config.json: {'; '.join(parts)}. Use the config.json saved with these weights.")
    model.load_state_dict(state, strict=strict)  # copies cast fp16 shards into fp32 parameters
