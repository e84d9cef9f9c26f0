"""Test-time augmentation: a model's answer averaged over a face crop and its mirror image.

A face is no more fake for being seen in a mirror, but a network trained on a few thousand
source videos does not answer exactly the same for both (its training flips were random, one
per view). Averaging the two logits removes that left-right noise. Measured on val (2,400
crops, ONNX Runtime) with the released weights, `evaluate --tta flip --baseline-tta none`: the
teacher 0.9509 -> 0.9557 (paired 95% interval of the gain +0.0027 to +0.0070), the student
0.9483 -> 0.9556 (+0.0047 to +0.0102), each also under every degradation of the robustness
report, with fewer real faces called fake. Hence `DEFAULT_TTA`: what the app, `analyze`,
`evaluate` and `bench` use unless told otherwise (`--tta none`, DEEPFAKE_KD_TTA=none).

`with_tta(model, "flip")` wraps any model of the one interface, in any runtime (wrap after
`pipeline.runtime.accelerate`: the ONNX export stays the plain model's, so its cache is shared):
each call runs the model once on a batch of 2N (the crops, then their mirrors) and returns the
mean of each pair of outputs, logits or pre-logit features alike. It costs about twice the
model's time per face, except where a call is mostly overhead: on the 2-core Xeon a face at
batch 1 took the teacher only 1.0-1.3x its one-pass time, the student 1.2-1.9x, so the
student's lead at batch 1 shrinks (`bench --tta flip`: -95.0 to -95.2% against -96.4 to -96.7%
with one pass; README "Performance").
"""

from __future__ import annotations

import torch

from ..errors import DeepfakeKDError
from ..models import FaceClassifier

TTAS = ("none", "flip")
DEFAULT_TTA = "flip"
TTA_LABELS = {"none": "", "flip": "averaged with the mirror image"}  # what a page adds
TTA_PASSES = {"none": 1, "flip": 2}  # forward passes per face


class FlipAveraged(FaceClassifier):
    """`model`'s output averaged over each crop and its horizontal mirror."""

    tta = "flip"

    def __init__(self, model: FaceClassifier):
        super().__init__(input_size=model.input_size, mean=model.mean, std=model.std)
        if model.tta != "none":
            raise DeepfakeKDError(f"{type(model).__name__} is already test-time augmented "
                                  f"({model.tta})")
        self.model = model.eval()  # registered: num_parameters() stays the model's
        self.runtime = model.runtime
        self.eval()

    def unwrap(self) -> FaceClassifier:
        return self.model.unwrap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        out = self.model(torch.cat([x, x.flip(-1)]))
        assert out.shape[0] == 2 * n, (tuple(x.shape), tuple(out.shape))
        return (out[:n] + out[n:]) / 2

    def preprocess(self, crops, *, size: int | None = None) -> torch.Tensor:
        return self.model.preprocess(crops, size=size)


def with_tta(model: FaceClassifier, tta: str) -> FaceClassifier:
    """`model` itself for "none", else wrapped in the named test-time augmentation."""
    if tta == "none":
        return model
    if tta == "flip":
        return FlipAveraged(model)
    raise DeepfakeKDError(f"unknown test-time augmentation {tta!r}; choose one of "
                          f"{', '.join(TTAS)}")
