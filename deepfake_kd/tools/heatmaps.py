"""`python -m deepfake_kd analyze CLIP --explain OUT_DIR`: where each model looks, as files.

For the faces with the highest fake probability (`--explain-faces`, 4 by default), OUT_DIR gets
one PNG per face with the crop and every model's heatmap overlay side by side, one overlay PNG per
model, and `result.json`: the full result (what `--json` prints) with an `explanation` holding the
numbers (each face's probabilities, heatmap peaks, branch shares, agreement and file names, and
the mean agreement). The heatmaps are `pipeline.explain`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from ..errors import DeepfakeKDError
from ..models import FaceClassifier
from ..pipeline.analysis import AnalysisResult
from ..pipeline.explain import (
    EXPLAINED_FACES,
    explain_result,
    most_suspicious,
    overlay,
    side_by_side,
)
from ..util import write_atomically
from .arguments import positive_int


def add_explain_arguments(parser) -> None:
    parser.add_argument("--explain", metavar="OUT_DIR",
                        help="also write where each model looks (Grad-CAM heatmaps) for the "
                             "faces with the highest fake probability: PNG overlays and "
                             "result.json with the numbers, in OUT_DIR")
    parser.add_argument("--explain-faces", type=positive_int, default=EXPLAINED_FACES,
                        metavar="K", help=f"faces to explain (default {EXPLAINED_FACES})")


def png(image: np.ndarray) -> bytes:
    """uint8 RGB image -> PNG bytes."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DeepfakeKDError("OpenCV could not encode a PNG")
    return data.tobytes()


def write_explanation(result: AnalysisResult, models: Mapping[str, FaceClassifier],
                      out_dir: str | Path, *, count: int = EXPLAINED_FACES) -> dict:
    """Explain the `count` most suspicious faces and write the PNGs and result.json into
    `out_dir`; returns what result.json holds: the result with its `explanation`."""
    out = Path(out_dir)
    explanation = explain_result(result, models, most_suspicious(result, count))
    data = explanation.to_dict()
    for rank, (face, entry) in enumerate(zip(explanation.faces, data["faces"]), start=1):
        stem = f"face{rank:02d}-frame{face.frame_index:05d}-track{face.track_id}"
        files = {"side_by_side": f"{stem}.png",
                 **{name: f"{stem}-{name}.png" for name in face.heatmaps}}
        write_atomically(out / files["side_by_side"], png(side_by_side(face)))
        for name, heatmap in face.heatmaps.items():
            write_atomically(out / files[name], png(overlay(face.crop, heatmap)))
        entry["files"] = files
    full = {**result.to_dict(), "explanation": data}
    write_atomically(out / "result.json", json.dumps(full, indent=2) + "\n")
    return full


def format_explanation(data: dict, out_dir: str | Path) -> str:
    """Lines for the text summary: each explained face and where its pictures are."""
    if not data["faces"]:
        return "\nNo face to explain."
    names = data["models"]
    lines = ["", f"where the models look (Grad-CAM), written to {out_dir}:",
             f"{'frame':>6} {'time':>7} {'track':>5} " + " ".join(f"{n:>8}" for n in names)
             + f" {'agreement':>9}  picture"]
    for face in data["faces"]:
        agreement = "-" if face["agreement"] is None else f"{face['agreement']:.2f}"
        lines.append(f"{face['frame_index']:>6} {face['timestamp']:>6.2f}s "
                     f"{face['track_id']:>5} "
                     + " ".join(f"{face['probs'][n]:>8.3f}" for n in names)
                     + f" {agreement:>9}  {face['files']['side_by_side']}")
    mean = data["mean_agreement"]
    lines.append("mean agreement (Spearman rank correlation of the heatmaps): "
                 + ("undefined (no face with evidence in both)" if mean is None else f"{mean:.2f}"))
    return "\n".join(lines)
