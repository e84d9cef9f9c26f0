"""One resolver for model references: a local folder, or a Hub repo id (`owner/name[@revision]`).

The folder is tried first, then the Hub (or only its local cache when HF_HUB_OFFLINE is set).
A reference that cannot be resolved raises `ModelNotFoundError` listing what was tried and how to
get the weights. Nothing here runs at import time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..errors import ModelNotFoundError, WeightsError
from .base import FaceClassifier
from .cross_efficient_vit import CrossEfficientViT
from .efficientnet_classifier import EfficientNetClassifier
from .student import StudentCNN
from .tiny_efficientnet import TinyEfficientNet

MODEL_CLASSES: dict[str, type[FaceClassifier]] = {
    cls.__name__: cls
    for cls in (CrossEfficientViT, StudentCNN, TinyEfficientNet, EfficientNetClassifier)
}
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_REFERENCES = {"teacher": WEIGHTS_DIR / "teacher", "student": WEIGHTS_DIR / "student"}
ENV_REFERENCES = {"teacher": "DEEPFAKE_KD_TEACHER", "student": "DEEPFAKE_KD_STUDENT"}
HUB_FILES = ["*.json", "*.safetensors", "README.md"]


def default_reference(role: str) -> str:
    """The model used when none is named: an environment variable (a Space), else bundled."""
    return os.environ.get(ENV_REFERENCES[role]) or str(DEFAULT_REFERENCES[role])


def split_reference(reference: str) -> tuple[str, str | None]:
    """'owner/name@rev' -> ('owner/name', 'rev'); a reference without '@' has no revision."""
    name, _, revision = str(reference).partition("@")
    return name, revision or None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


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


def load_model(reference: str, *, cache_dir=None, token=None) -> FaceClassifier:
    """Build the model a reference describes (its config.json) and load its weights strictly."""
    folder = weights_folder(reference, cache_dir=cache_dir, token=token)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{config_path}: missing; a weights folder needs the config.json "
                           "written by save_pretrained().")
    try:
        config = json.loads(config_path.read_text())
        cls = MODEL_CLASSES[config["architecture"]]
    except (ValueError, KeyError) as exc:
        raise WeightsError(f"{config_path}: not a deepfake-kd model config ({exc!r}); expected "
                           f"'architecture' to be one of {sorted(MODEL_CLASSES)}.") from None
    try:
        return cls.from_pretrained(str(folder), strict=True)
    except TypeError as exc:  # config keys the class does not take
        raise WeightsError(f"{config_path}: does not fit {cls.__name__}: {exc}") from None


def save_model(model: FaceClassifier, folder: str | Path) -> Path:
    """save_pretrained plus the architecture name, so `load_model` needs no other hint."""
    config = {**model._hub_mixin_config, "architecture": type(model).__name__}
    model.save_pretrained(folder, config=config)
    return Path(folder)
