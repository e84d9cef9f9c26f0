"""Weights on disk: safetensors only (one file, or shards, tensors larger than a shard stored as
row chunks), and the one resolver of model references.

A reference is a local folder or a Hub repo id (`owner/name[@revision]`). The folder is tried
first, then the Hub (or only its local cache when HF_HUB_OFFLINE is set). A reference that
cannot be resolved raises `ModelNotFoundError` listing what was tried and how to get the
weights. Nothing here knows a model class (`registry` builds models) and nothing runs at
import time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict, snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file
from torch import nn

from ..errors import ModelNotFoundError, WeightsError
from ..util import env_flag

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_SHARD_BYTES = 45_000_000  # keeps every released file under the 50 MB limit for git
PART_MARKER = ".__part"  # a tensor larger than a shard is stored as row chunks `<key>.__part<i>`
HUB_FILES = ["*.json", "*.safetensors", "README.md"]


# --- safetensors I/O -------------------------------------------------------------------------

def save_weights(state: dict[str, torch.Tensor], folder: str | Path) -> None:
    """A state dict as safetensors in `folder`, sharded under MAX_SHARD_BYTES per file."""
    state = split_large_tensors(state, max_bytes=MAX_SHARD_BYTES)
    save_torch_state_dict(state, folder, max_shard_size=MAX_SHARD_BYTES)


def split_large_tensors(state: dict[str, torch.Tensor], *, max_bytes: int
                        ) -> dict[str, torch.Tensor]:
    """Split tensors bigger than a shard into row chunks: safetensors cannot spread one tensor
    over two files, and the teacher's 75,264 x 384 patch embedding is 58 MB even in fp16."""
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()  # also from a GPU or channels-last
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


# --- the one resolver ------------------------------------------------------------------------

def split_reference(reference: str) -> tuple[str, str | None]:
    """'owner/name@rev' -> ('owner/name', 'rev'); a reference without '@' has no revision."""
    name, _, revision = str(reference).partition("@")
    return name, revision or None


def hub_offline() -> bool:
    return env_flag("HF_HUB_OFFLINE")


def weights_folder(reference: str, *, revision: str | None = None, cache_dir=None, token=None,
                   local_files_only: bool = False) -> Path:
    """A local folder holding config.json and safetensors weights for `reference`."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    tried = [f"local folder {path.resolve()}: does not exist"]
    repo_id, ref_revision = split_reference(str(reference))
    revision = revision or ref_revision
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        tried.append(f"Hub repo {repo_id!r}: not a valid repo id")
        raise ModelNotFoundError(not_found_message(reference, tried)) from None
    offline = local_files_only or hub_offline()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                   local_files_only=offline, allow_patterns=HUB_FILES)
    except Exception as exc:  # offline cache miss, unknown repo, network error: all mean "absent"
        where = "Hub cache (HF_HUB_OFFLINE is set)" if offline else "Hugging Face Hub"
        tried.append(f"{where} {repo_id}@{revision or 'main'}: {type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else 'not found'}")
        raise ModelNotFoundError(not_found_message(reference, tried)) from None
    return Path(folder)


def not_found_message(reference: str, tried: list[str]) -> str:
    return (f"No model at {reference!r}. Tried: " + "; ".join(tried) + ". Pass a folder made by "
            "save_pretrained() (e.g. weights/teacher), or a Hub repo id such as owner/name[@rev] "
            "(download it once with network access, or `huggingface-cli download owner/name`).")


def read_config(folder: Path) -> tuple[Path, dict]:
    """(path, content) of a weights folder's config.json; a WeightsError when it is absent or
    not a JSON object."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise WeightsError(f"{config_path}: missing; a weights folder needs the config.json "
                           "written by save_pretrained().")
    try:
        config = json.loads(config_path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise WeightsError(f"{config_path}: not a deepfake-kd model config ({exc!r})") from None
    return config_path, config
