"""The one name -> class map of the architectures, and building models from configs.

`ARCHITECTURES` maps each architecture's command-line name (`--arch`) to its class; a saved
config names the class (`"architecture": "CrossEfficientViT"`), and `architecture()` takes
either. `load_model` builds the model a weights folder describes and loads its weights
strictly; a config key the class does not take stops it with a message naming the key.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError
from .base import FaceClassifier
from .cross_efficient_vit import CrossEfficientViT
from .efficientnet_classifier import EfficientNetClassifier
from .student_cnn import StudentCNN
from .tiny_efficientnet import TinyEfficientNet
from .weights import read_config, weights_folder

ARCHITECTURES: dict[str, type[FaceClassifier]] = {
    "cross-efficient-vit": CrossEfficientViT,
    "efficientnet-classifier": EfficientNetClassifier,
    "tiny-efficientnet": TinyEfficientNet,
    "student-cnn": StudentCNN,
}
CONFIG_ONLY_KEYS = {"architecture"}  # written by `save_model`, not a constructor argument


def class_names() -> list[str]:
    return sorted(cls.__name__ for cls in ARCHITECTURES.values())


def architecture(name: str) -> type[FaceClassifier]:
    """The class for a command-line name ("tiny-efficientnet") or a class name
    ("TinyEfficientNet"); KeyError for neither."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    for cls in ARCHITECTURES.values():
        if cls.__name__ == name:
            return cls
    raise KeyError(name)


def model_from_config(config: dict, *, source: str = "config") -> FaceClassifier:
    """A model with random weights built as `config` (a config.json's content) says."""
    cls, kwargs, retired = parse_config(config, source=source)
    model = cls(**kwargs)
    check_derived(model, retired, source=source)
    return model.eval()


def parse_config(config: dict, *, source: str
                 ) -> tuple[type[FaceClassifier], dict, dict]:
    """(class, constructor arguments, retired keys) of a config; a WeightsError for an unknown
    architecture or a key that the class neither takes nor derives."""
    try:
        cls = architecture(config["architecture"])
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"{source}: not a deepfake-kd model config ({exc!r}); expected "
                           f"'architecture' to be one of {class_names()}.") from None
    accepted = cls.init_parameter_names()
    derived = set(cls.derived_keys)
    unknown = sorted(set(config) - accepted - derived - CONFIG_ONLY_KEYS)
    if unknown:
        raise WeightsError(f"{source}: {cls.__name__} takes no "
                           f"{'key' if len(unknown) == 1 else 'keys'} {', '.join(unknown)}; "
                           f"remove {'it' if len(unknown) == 1 else 'them'} from the config "
                           f"(it takes {', '.join(sorted(accepted))}).")
    kwargs = {k: v for k, v in config.items() if k in accepted}
    retired = {k: v for k, v in config.items() if k in derived}
    return cls, kwargs, retired


def check_derived(model: FaceClassifier, retired: dict, *, source: str) -> None:
    """Values an older config stored that the model now derives must agree with it."""
    derived = model.derived_config()
    for key, value in retired.items():
        if derived[key] != value:
            raise WeightsError(f"{source}: {key} is {value}, but the {type(model).__name__} it "
                               f"describes has {derived[key]}; remove {key} from the config "
                               "(it is derived from the model).")


def load_model(reference: str, *, cache_dir=None, token=None) -> FaceClassifier:
    """Build the model a reference describes (its config.json) and load its weights strictly."""
    folder = weights_folder(reference, cache_dir=cache_dir, token=token)
    config_path, config = read_config(folder)
    cls, kwargs, retired = parse_config(config, source=str(config_path))
    model = cls.from_pretrained(str(folder), strict=True)
    check_derived(model, retired, source=str(config_path))
    return model


def save_model(model: FaceClassifier, folder: str | Path) -> Path:
    """save_pretrained plus the architecture name, so `load_model` needs no other hint."""
    config = {**model.config, "architecture": type(model).__name__}
    model.save_pretrained(folder, config=config)
    return Path(folder)
