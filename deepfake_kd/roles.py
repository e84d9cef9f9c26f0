"""Teacher and student: the one table of the two roles the app and the commands fill.

Everything that says "teacher" or "student" reads it from here: each role's default weights
(the bundled `weights/<role>`), the environment variable that points it elsewhere (a Space sets
`DEEPFAKE_KD_TEACHER` / `DEEPFAKE_KD_STUDENT`), the architecture random weights take when no
config is at hand, and the project root, computed once. Also the command-line arguments every
command shares (`--teacher`, `--student`, `--untrained`) and loading models by role with
messages that say what to do. Models themselves know nothing of roles.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import DeepfakeKDError, ModelNotFoundError
from .models import (
    CrossEfficientViT,
    FaceClassifier,
    TinyEfficientNet,
    load_model,
    model_from_config,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = PROJECT_ROOT / "weights"
DEFAULT_THRESHOLD = 0.55  # the reference rule: fake when a face track's mean p(fake) exceeds it
ENV_PREFIX = "DEEPFAKE_KD_"
ENV_UNTRAINED = f"{ENV_PREFIX}UNTRAINED"
UNTRAINED = "untrained (random weights)"  # the source of a model with random weights
TEACHER, STUDENT = "teacher", "student"


@dataclass(frozen=True)
class Role:
    name: str
    architecture: type[FaceClassifier]  # what --untrained builds when no config is at hand
    default: Path  # the bundled weights folder
    env: str  # the variable that names other weights (a folder or a Hub repo id)


ROLES: dict[str, Role] = {
    name: Role(name, cls, WEIGHTS_DIR / name, f"{ENV_PREFIX}{name.upper()}")
    for name, cls in ((TEACHER, CrossEfficientViT), (STUDENT, TinyEfficientNet))
}


def default_reference(role: str) -> str:
    """The model used when none is named: the role's variable (a Space), else bundled."""
    return os.environ.get(ROLES[role].env) or str(ROLES[role].default)


def is_bundled(role: str, reference: str) -> bool:
    return reference == str(ROLES[role].default)


def short_path(reference: str) -> str:
    """A path inside the project relative to it (weights/teacher), anything else as given."""
    try:
        return str(Path(reference).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return reference


def untrained_model(role: str) -> FaceClassifier:
    """Random weights in the architecture of the role's default weights when their config.json
    is at hand (e.g. the released teacher's EfficientNet-Lite0 branches), else the role's
    architecture with its defaults."""
    config_path = Path(default_reference(role)) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return ROLES[role].architecture().eval()
    try:
        return model_from_config(config, source=str(config_path))
    except DeepfakeKDError:
        return ROLES[role].architecture().eval()


def load_role(role: str, reference: str) -> FaceClassifier:
    """load_model, with a message that says what to do when the default weights are absent."""
    try:
        return load_model(reference)
    except ModelNotFoundError as exc:
        if is_bundled(role, reference):
            raise ModelNotFoundError(
                f"{role} weights are missing: {reference} does not exist yet (the {role} is "
                f"not trained). Pass --{role} REF (a weights folder or a Hub repo id), or add "
                "--untrained to try the pipeline with random weights.") from None
        raise DeepfakeKDError(f"--{role} {reference}: {exc}") from None


# --- command-line arguments ------------------------------------------------------------------

def add_reference_arguments(parser: argparse.ArgumentParser, *, default: str | None = None
                            ) -> None:
    """--teacher REF and --student REF; `default` describes what an absent one means."""
    for role in ROLES:
        parser.add_argument(f"--{role}", metavar="REF",
                            help=f"{role} weights: a folder or Hub repo id[@rev] (default "
                                 f"{default or default_reference(role)})")


def add_model_arguments(parser: argparse.ArgumentParser, *, untrained_help: str) -> None:
    """--teacher / --student REF and --untrained, as `load_cli_models` reads them."""
    add_reference_arguments(parser)
    parser.add_argument("--untrained", action="store_true",
                        help=f"random weights for every model not given by REF: {untrained_help}")


def cli_reference(args: argparse.Namespace, role: str) -> str:
    return getattr(args, role) or default_reference(role)


def load_cli_models(args: argparse.Namespace
                    ) -> tuple[dict[str, FaceClassifier], dict[str, str]]:
    """Every role's model as the arguments of `add_model_arguments` say, and its source."""
    models, sources = {}, {}
    for role in ROLES:
        reference = getattr(args, role)
        if reference is None and args.untrained:
            models[role], sources[role] = untrained_model(role), UNTRAINED
            continue
        reference = reference or default_reference(role)
        models[role], sources[role] = load_role(role, reference), reference
    untrained = [role for role, source in sources.items() if source == UNTRAINED]
    if untrained:
        print(f"WARNING: {' and '.join(untrained)} use RANDOM weights (--untrained): their "
              "scores are meaningless; this run only exercises the pipeline.", file=sys.stderr)
    return models, sources
