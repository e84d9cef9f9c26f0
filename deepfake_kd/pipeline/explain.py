"""Where each model looks: Grad-CAM heatmaps of face crops, and how much two models agree.

Grad-CAM (Selvaraju et al., 2017, arXiv 1610.02391), through the one model interface, with no
case for teacher or student:

- the maps explained are those of `model.trunks()`, the backbones whose maps feed
  `forward_from_features` (the teacher's 1280x7x7 and 24x56x56 maps, the student's 80x7x7 one).
  The trunks run without gradients and only the layers on top run with them, so a heatmap costs
  one forward pass plus the backward pass of the head, never the backbones' backward pass. A
  model without trunks (the previous release's `StudentCNN`) falls back to the output of its last
  `Conv2d`, the layer Grad-CAM was defined on; a model with neither is refused with what to add;
- for each map A (C channels), the gradient of the fake logit w.r.t. it is averaged over space
  into one weight per channel, and the map's heatmap is ReLU(sum_c weight_c * A_c): where the
  channels that raise the fake logit are active;
- a model with several maps (the teacher) combines them by evidence: each map's heatmap,
  upsampled to crop resolution and scaled to sum to 1, is weighted by its total (its sum over the
  map's cells, the positive first-order share of that map in the fake logit: for a head that
  pools and applies a linear layer it is exactly the logit minus the bias), then the sum is
  normalised to 0-1. A branch that barely moves the logit barely shows; `shares` reports each
  map's part per face;
- every heatmap is at crop resolution (224x224) and scaled so its maximum is 1. A face without
  any positive evidence for "fake" gets an all-zero heatmap (nothing raises the fake logit).

Agreement of two models on a face is the Spearman rank correlation of their heatmaps, both
area-resized to 56x56 (the teacher's finest map; finer adds only interpolated values): 1 when
they rank the regions of the face alike, 0 when unrelated, None when either map is constant.

The models are explained in eval mode on their eager torch model (`unwrap()`), one model's
backward pass at a time, in batches of 8 faces. A model that answers with its mirror image too
(`pipeline.tta`, flip) is explained as it answers: the mirrored crop's Grad-CAMs, mirrored back,
join the crop's own as more maps of the same face, combined by evidence like the teacher's two
branches, and the probability is that of the mean logit. See README "Where the models look".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeepfakeKDError
from ..models import FaceClassifier
from ..models.base import preprocessed_batches
from .analysis import AnalysisResult, plain

GRADCAM_BATCH = 8  # faces per backward pass: bounds the memory of the teacher's explanation
AGREEMENT_SIZE = 56  # heatmaps are compared on this grid
EXPLAINED_FACES = 4  # faces explained by default: the most suspicious ones
OVERLAY_ALPHA = 0.6  # opacity of the colour where the heatmap is 1 (0 where it is 0)


@dataclass
class Heatmaps:
    """One model's explanation of a batch of crops."""

    heatmaps: np.ndarray  # [N, H, W] float32 in 0..1, at crop resolution
    probs: np.ndarray  # [N] fake probability, from the same forward pass
    shares: np.ndarray  # [N, maps] each map's share of the positive evidence (0 where none)
    maps: list[str]  # the maps explained, "CxHxW"
    seconds: float  # forward and backward passes, preprocessing excluded


@dataclass
class FaceExplanation:
    face: int  # index into AnalysisResult.faces
    frame_index: int
    timestamp: float
    track_id: int
    probs: dict[str, float]  # model -> fake probability
    peaks: dict[str, tuple[int, int] | None]  # model -> (x, y) of the heatmap's maximum in crop
    #                                           pixels; None for an all-zero heatmap
    shares: dict[str, list[float]]  # model -> share of each of its maps (Explanation.maps)
    agreement: float | None  # Spearman rank correlation of the first two models' heatmaps
    crop: np.ndarray = field(repr=False, metadata={"json": False})
    heatmaps: dict[str, np.ndarray] = field(repr=False, metadata={"json": False})


@dataclass
class Explanation:
    method: str
    models: list[str]  # in the order given; agreement compares the first two
    maps: dict[str, list[str]]  # model -> the maps its heatmaps come from, "CxHxW"
    faces: list[FaceExplanation]
    mean_agreement: float | None  # over the faces whose agreement is defined
    seconds: dict[str, float]  # model -> time spent on its heatmaps

    def to_dict(self) -> dict:
        """Plain JSON-ready data: the numbers, without crops and heatmaps."""
        return plain(self)


METHOD = ("Grad-CAM of the fake logit on the maps of trunks() (else the last Conv2d); "
          "several maps weighted by their evidence")


# --- heatmaps -------------------------------------------------------------------------------------

def last_conv(model: nn.Module) -> nn.Conv2d:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise DeepfakeKDError(f"{type(model).__name__} has neither trunks() nor a Conv2d layer, "
                              "so there is no map to explain; give it trunks() and "
                              "forward_from_features() (see models/base.py)")
    return convs[-1]


def logits_and_maps(model: FaceClassifier, x: torch.Tensor
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The fake logits and the maps they are explained on, in a graph from the maps up.
    Call with gradients enabled."""
    trunks = model.trunks()
    if trunks:
        with torch.no_grad():  # no backward pass through the backbones: not needed, not paid
            maps = [trunk(x).requires_grad_() for trunk in trunks]
        return model.forward_from_features(*maps), maps
    captured: list[torch.Tensor] = []
    hook = last_conv(model).register_forward_hook(
        lambda module, inputs, output: captured.append(output))
    try:
        logits = model(x.detach().requires_grad_())  # a graph even if no weight needs gradients
    finally:
        hook.remove()
    return logits, captured[-1:]


def grad_cams(model: FaceClassifier, x: torch.Tensor
              ) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
    """Fake logits [N], one Grad-CAM [N, h, w] per map (not normalised), and the maps' shapes
    ("CxHxW")."""
    with torch.enable_grad():
        logits, maps = logits_and_maps(model, x)
        # Faces do not interact in eval mode, so the gradient of the sum is each face's own.
        grads = torch.autograd.grad(logits.sum(), maps)
    cams = [F.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap.detach()).sum(dim=1))
            for grad, fmap in zip(grads, maps)]
    return logits.detach(), cams, ["x".join(map(str, fmap.shape[1:])) for fmap in maps]


def combine(cams: list[torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One heatmap [N, size, size] in 0..1 from each map's Grad-CAM, and each map's share of the
    evidence [N, maps]: each map's CAM, upsampled and scaled to sum to 1, weighted by its sum over
    the map's cells; then scaled so the maximum is 1."""
    evidence = torch.stack([cam.sum(dim=(1, 2)) for cam in cams], dim=1)  # [N, maps]
    total = torch.zeros(len(evidence), size, size)
    for k, cam in enumerate(cams):
        up = F.interpolate(cam[:, None], size=(size, size), mode="bilinear",
                           align_corners=False)[:, 0]
        mass = up.sum(dim=(1, 2), keepdim=True)
        total += torch.where(mass > 0, up / mass.clamp(min=1e-30), 0.0) \
            * evidence[:, k, None, None]
    peak = total.amax(dim=(1, 2), keepdim=True)
    heatmaps = torch.where(peak > 0, total / peak.clamp(min=1e-30), 0.0)
    shares = evidence / evidence.sum(dim=1, keepdim=True).clamp(min=1e-30)
    return heatmaps, shares


def explain_crops(model: FaceClassifier, crops: np.ndarray, *,
                  batch_size: int = GRADCAM_BATCH) -> Heatmaps:
    """Heatmaps of square uint8 RGB crops [N, S, S, 3], at their resolution S, from the eager
    torch model in eval mode, `batch_size` crops per backward pass; with flip averaging
    (`model.tta`), of the crops and their mirrors together (module docstring)."""
    mirrored = model.tta == "flip"
    model = model.unwrap().eval()
    if len(crops) == 0:
        raise DeepfakeKDError("no face crops to explain")
    heatmaps, probs, shares, seconds = [], [], [], 0.0
    for x in preprocessed_batches(model, crops, batch_size):
        tic = time.perf_counter()
        logits, cams, maps = grad_cams(model, x)
        if mirrored:  # (the mean logit's gradient halves both passes' CAMs alike: no change)
            mirror_logits, mirror_cams, _ = grad_cams(model, x.flip(-1))
            logits = (logits + mirror_logits) / 2
            cams = cams + [cam.flip(-1) for cam in mirror_cams]
        batch_heatmaps, batch_shares = combine(cams, crops.shape[1])
        if mirrored:  # each map's share: its own plus its mirror's
            batch_shares = batch_shares[:, :len(maps)] + batch_shares[:, len(maps):]
        seconds += time.perf_counter() - tic
        heatmaps.append(batch_heatmaps.numpy())
        probs.append(torch.sigmoid(logits.float()).numpy())
        shares.append(batch_shares.numpy())
    return Heatmaps(heatmaps=np.concatenate(heatmaps).astype(np.float32),
                    probs=np.concatenate(probs), shares=np.concatenate(shares), maps=maps,
                    seconds=seconds)


# --- agreement ------------------------------------------------------------------------------------

def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing the mean of their ranks (as Spearman's rho needs)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two equally shaped arrays; None if either is constant."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else None


def agreement(a: np.ndarray, b: np.ndarray, *, size: int = AGREEMENT_SIZE) -> float | None:
    """How alike two heatmaps rank the regions of a face: Spearman's rho on a size x size grid."""
    def grid(heatmap):
        return cv2.resize(heatmap.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)

    return spearman(grid(a), grid(b))


# --- which faces, and the explanation of a result -----------------------------------------------

def most_suspicious(result: AnalysisResult, count: int = EXPLAINED_FACES) -> list[int]:
    """Indices of the `count` faces with the highest fake probability of any model (what either
    model finds most suspicious), highest first."""
    order = sorted(range(len(result.faces)),
                   key=lambda i: -max(result.faces[i].probs.values(), default=0.0))
    return order[:count]


def faces_at(result: AnalysisResult, seconds: float) -> list[int]:
    """Indices of the faces of the sampled frame nearest to `seconds` among the frames with a
    face (empty when the clip has none)."""
    if not result.faces:
        return []
    nearest = min(result.faces, key=lambda face: abs(face.timestamp - seconds)).frame_index
    return [i for i, face in enumerate(result.faces) if face.frame_index == nearest]


def explain_result(result: AnalysisResult, models: Mapping[str, FaceClassifier],
                   faces: list[int]) -> Explanation:
    """Every model's heatmap of the faces `faces` (indices into `result.faces`), one model at
    a time, and the agreement of the first two models on each face."""
    names = list(models)
    chosen = [result.faces[i] for i in faces]
    if not chosen:
        return Explanation(method=METHOD, models=names, maps={}, faces=[], mean_agreement=None,
                           seconds={})
    crops = np.stack([face.crop for face in chosen])
    explained = {name: explain_crops(model, crops) for name, model in models.items()}
    out = []
    for k, (index, face) in enumerate(zip(faces, chosen)):
        heatmaps = {name: e.heatmaps[k] for name, e in explained.items()}
        out.append(FaceExplanation(
            face=index, frame_index=face.frame_index, timestamp=face.timestamp,
            track_id=face.track_id, probs=dict(face.probs),
            peaks={name: peak(h) for name, h in heatmaps.items()},
            shares={name: [float(s) for s in e.shares[k]] for name, e in explained.items()},
            agreement=agreement(*(heatmaps[name] for name in names[:2]))
            if len(names) >= 2 else None,
            crop=face.crop, heatmaps=heatmaps))
    defined = [f.agreement for f in out if f.agreement is not None]
    return Explanation(method=METHOD, models=names,
                       maps={name: e.maps for name, e in explained.items()}, faces=out,
                       mean_agreement=float(np.mean(defined)) if defined else None,
                       seconds={name: e.seconds for name, e in explained.items()})


def peak(heatmap: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of a heatmap's maximum; None when it is all zero."""
    if not heatmap.any():
        return None
    y, x = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    return int(x), int(y)


# --- pictures -------------------------------------------------------------------------------------

def overlay(crop: np.ndarray, heatmap: np.ndarray, *, alpha: float = OVERLAY_ALPHA
            ) -> np.ndarray:
    """The crop (uint8 RGB) with the heatmap in colour (jet: blue low, red high), the colour
    more opaque where the heatmap is higher, so the face stays visible where the model does not
    look."""
    colour = cv2.cvtColor(cv2.applyColorMap((heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET),
                          cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (alpha * heatmap)[..., None]
    return (crop.astype(np.float32) * (1 - weight) + colour * weight).round().astype(np.uint8)


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of the image with `text` on a dark band at its top."""
    out = image.copy()
    scale = image.shape[1] / 400
    (_, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = height + baseline + 6
    out[:band] = (out[:band] * 0.35).astype(np.uint8)
    cv2.putText(out, text, (4, band - baseline - 3), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def side_by_side(face: FaceExplanation) -> np.ndarray:
    """crop | each model's overlay, left to right, each labelled with whose it is."""
    panels = [labelled(face.crop, "crop")]
    panels += [labelled(overlay(face.crop, heatmap), f"{name} {face.probs[name]:.2f}")
               for name, heatmap in face.heatmaps.items()]
    gap = np.full((face.crop.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
