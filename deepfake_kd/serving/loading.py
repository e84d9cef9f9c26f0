"""The app's models, loaded once at start-up.

`load_app_models()` loads every role from its environment variable (DEEPFAKE_KD_TEACHER /
DEEPFAKE_KD_STUDENT: a folder or a Hub repo id) or the bundled `weights/`. Missing weights are
not a crash: they are reported (`texts.banner_markdown`) and every request is answered with the
same explanation. DEEPFAKE_KD_UNTRAINED=1 stands random-weight models in for missing ones,
labelled loudly everywhere. Each model then runs behind the runtime DEEPFAKE_KD_RUNTIME names
(default: `SERVING_RUNTIME`); a model whose runtime cannot be built (say, ONNX Runtime not
installed) runs eager, and the banner says why. Both models answer with the test-time
augmentation DEEPFAKE_KD_TTA names (default: `pipeline.tta.DEFAULT_TTA`), the same for both,
so the page's times compare like with like.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import DeepfakeKDError, ModelNotFoundError
from ..models import FaceClassifier, load_model
from ..pipeline.runtime import RUNTIMES, accelerate
from ..pipeline.tta import DEFAULT_TTA, TTAS, with_tta
from ..roles import (
    ENV_PREFIX,
    ENV_UNTRAINED,
    ROLES,
    UNTRAINED,
    default_reference,
    is_bundled,
    short_path,
    untrained_model,
)
from ..util import env_flag

ENV_RUNTIME = f"{ENV_PREFIX}RUNTIME"
# The app holds its models for as long as it runs, beside every request's frames, so it keeps
# the teacher's weights once (ONNX Runtime on PyTorch's tensors) rather than twice: on the whole
# DFDC clip, peak memory 1839-1846 instead of 2177 MiB, for 0.06 s more of the teacher (total
# 1.52-1.62 against 1.49 s; README "Performance"). The CLI keeps the quicker `DEFAULT_RUNTIME`.
SERVING_RUNTIME = "onnx-shared"
ENV_TTA = f"{ENV_PREFIX}TTA"


@dataclass
class AppModels:
    """The models the app serves, where each came from, and what went wrong loading any."""

    models: dict[str, FaceClassifier]  # role -> model; a role whose weights failed is absent
    sources: dict[str, str]  # role -> the reference it was loaded from, or UNTRAINED
    problems: dict[str, str] = field(default_factory=dict)  # role -> why it did not load
    untrained: list[str] = field(default_factory=list)  # roles running on random weights
    fallbacks: dict[str, str] = field(default_factory=dict)  # role -> why it runs eager instead

    @property
    def ready(self) -> bool:
        return all(role in self.models for role in ROLES)


def load_app_models(*, untrained: bool | None = None, runtime: str | None = None,
                    tta: str | None = None) -> AppModels:
    """Each role from its environment variable or the bundled weights, behind `runtime`
    (default: DEEPFAKE_KD_RUNTIME, else `SERVING_RUNTIME`); never raises for weights that are
    missing or broken, nor for a runtime that cannot run them; every model with the test-time
    augmentation `tta` (default: DEEPFAKE_KD_TTA, else `DEFAULT_TTA`). `untrained` (default:
    DEEPFAKE_KD_UNTRAINED) builds random weights for the roles that failed."""
    untrained = env_flag(ENV_UNTRAINED) if untrained is None else untrained
    runtime = runtime or os.environ.get(ENV_RUNTIME) or SERVING_RUNTIME
    if runtime not in RUNTIMES or runtime == "onnx-int8":  # int8 needs calibration crops
        raise DeepfakeKDError(f"{ENV_RUNTIME}={runtime}: choose one of "
                              f"{', '.join(r for r in RUNTIMES if r != 'onnx-int8')}")
    tta = tta or os.environ.get(ENV_TTA) or DEFAULT_TTA
    if tta not in TTAS:
        raise DeepfakeKDError(f"{ENV_TTA}={tta}: choose one of {', '.join(TTAS)}")
    loaded = AppModels(models={}, sources={})
    for role in ROLES:
        reference = default_reference(role)
        try:
            model = load_model(reference).eval()
            loaded.sources[role] = reference
        except Exception as exc:  # a half-written or foreign folder must not stop the app
            loaded.problems[role] = load_problem(role, reference, exc)
            if not untrained:
                continue
            model = untrained_model(role)  # as the CLI's --untrained
            loaded.sources[role] = UNTRAINED
            loaded.untrained.append(role)
        try:
            loaded.models[role] = with_tta(accelerate(model, runtime), tta)
        except Exception as exc:  # the app still serves, only slower
            detail = str(exc) if isinstance(exc, DeepfakeKDError) \
                else f"{type(exc).__name__}: {exc}"
            loaded.fallbacks[role] = f"runs eager PyTorch, not {runtime}: {detail}"
            loaded.models[role] = with_tta(model, tta)
    return loaded


def load_problem(role: str, reference: str, exc: Exception) -> str:
    variable = ROLES[role].env
    if isinstance(exc, ModelNotFoundError) and is_bundled(role, reference):
        return (f"`{short_path(reference)}` does not exist yet (the {role} is not trained or "
                f"not downloaded), and `{variable}` is not set.")
    origin = f"`{variable}={reference}`" if os.environ.get(variable) else f"`{reference}`"
    detail = str(exc) if isinstance(exc, DeepfakeKDError) else f"{type(exc).__name__}: {exc}"
    return f"{origin}: {detail}"
