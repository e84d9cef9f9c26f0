"""The page's section "Where the models look": heatmaps, computed after the verdicts.

app.py chains these handlers after the Analyze event (so the heatmaps never delay the verdicts)
and behind the "Explain this frame" button. Each request is two steps: a quick one outside the
queue that checks the request and says what is being computed (`pending_*`), then the heatmaps
(`top`, `frame`), which take the page's result file, look up the analysed clip behind it
(`handler.RecentResults`: the analyses keep their face crops there) and return the status text
and a gallery with one row per face: the crop (captioned with the time, the person and the
agreement), then each model's heatmap overlay (captioned with its score). Plain functions of the
result and the models (`pipeline.explain` does the work), testable without a server.
"""

from __future__ import annotations

import math

import numpy as np

from ..pipeline.analysis import AnalysisResult
from ..pipeline.explain import (
    EXPLAINED_FACES,
    Explanation,
    FaceExplanation,
    explain_result,
    faces_at,
    most_suspicious,
    overlay,
)
from .handler import RecentResults, ResultFiles, UserError, gallery_files
from .loading import AppModels
from .plots import face_label

EXPLAIN_IDLE = "Analyze a clip: the heatmaps of the most suspicious faces follow the verdicts."
NOTHING_TO_EXPLAIN = "No face to explain: none was found in the sampled frames."
HOW_TO_READ = (
    "Each picture: the face crop, then each model's heatmap (Grad-CAM): warm colours mark the "
    "regions whose features raise that model's fake score the most; it shows where, not why. "
    "**Agreement** is the rank correlation of the two heatmaps: 1 when both models rank the "
    "regions of the face alike, 0 when unrelated, below 0 when opposed.")


class Explainer:
    """The section's handlers, over the app's models."""

    OUTPUTS = ("explain_status", "explanations")

    def __init__(self, app_models: AppModels, results: RecentResults, files: ResultFiles, *,
                 faces: int = EXPLAINED_FACES):
        self.app_models = app_models
        self.results = results
        self.files = files  # where the gallery's pictures go, a folder per request
        self.faces = faces

    def result_of(self, result_file) -> AnalysisResult | None:
        """The analysed clip behind the page's result file (a path; or a FileData-like dict)."""
        if isinstance(result_file, dict):
            result_file = result_file.get("path")
        return self.results.get(result_file)

    # --- the quick steps: clear, check, then say what is coming ----------------------------------

    def cleared(self) -> tuple[str, list]:
        """When Analyze is pressed: no heatmaps of the previous clip beside the new verdicts."""
        return EXPLAIN_IDLE, []

    def pending_top(self, result_file) -> str:
        result = self.result_of(result_file)
        if result is None:
            return EXPLAIN_IDLE
        if not result.faces:
            return NOTHING_TO_EXPLAIN
        count = min(self.faces, len(result.faces))
        models = " and ".join(self.app_models.models)
        return (f"⏳ Computing where the models look on the {count} most suspicious "
                f"face{'s' if count != 1 else ''} ({models}, one after the other)...")

    def pending_frame(self, result_file, seconds) -> str:
        at = self.check_time(self.result_of(result_file), seconds)
        return f"⏳ Computing where the models look in the frame nearest to {at:.2f} s..."

    # --- the heatmaps -------------------------------------------------------------------------------

    def top(self, result_file) -> tuple[str, list]:
        """The faces with the highest fake probability (of either model)."""
        result = self.result_of(result_file)
        if result is None or not result.faces:
            return self.pending_top(result_file), []
        explanation = explain_result(result, self.app_models.models,
                                     most_suspicious(result, self.faces))
        count = len(explanation.faces)
        return self.render(explanation, f"the {count} face{'s' if count != 1 else ''} with the "
                                        "highest fake probability (of either model)")

    def frame(self, result_file, seconds) -> tuple[str, list]:
        """Every face of the sampled frame nearest to `seconds` that has a face."""
        result = self.result_of(result_file)
        at = self.check_time(result, seconds)
        faces = faces_at(result, at)
        if not faces:
            return NOTHING_TO_EXPLAIN, []
        explanation = explain_result(result, self.app_models.models, faces)
        when = explanation.faces[0].timestamp
        moved = "" if abs(when - at) < 0.5 / max(result.fps, 1) else \
            f" (the sampled frame with a face nearest to {at:.2f} s)"
        return self.render(explanation, f"the frame at {when:.2f} s{moved}")

    def check_time(self, result: AnalysisResult | None, seconds) -> float:
        if result is None:
            raise UserError(f"Analyze a clip first, then pick a frame to explain (the app keeps "
                            f"the faces of its last {self.results.size} analyses).")
        try:
            at = float(seconds)
        except (TypeError, ValueError):
            at = math.nan
        if not 0.0 <= at <= result.duration:  # also NaN
            raise UserError(f"The frame time must be between 0 and {result.duration:.2f} s "
                            f"(the clip's length), got {seconds!r}.")
        return at

    # --- what the page shows ------------------------------------------------------------------------

    def render(self, explanation: Explanation, which: str) -> tuple[str, list]:
        mean = explanation.mean_agreement
        agreement = (f"mean agreement **{mean:.2f}**" if mean is not None
                     else "agreement undefined (a heatmap without evidence)")
        seconds = explanation.seconds
        timing = ", ".join(f"{name} {s:.2f} s" for name, s in seconds.items())
        lines = [f"**Where the models look** on {which}: {agreement}. "
                 f"Computed after the verdicts in {sum(seconds.values()):.2f} s ({timing}).",
                 HOW_TO_READ]
        if self.app_models.untrained:
            lines.append(f"⚠️ The {' and '.join(self.app_models.untrained)} "
                         "run on random weights: their heatmaps mean nothing.")
        items = [item for face in explanation.faces for item in gallery_row(face)]
        return "\n\n".join(lines), gallery_files(items, self.files.new_folder()) if items else []


def gallery_row(face: FaceExplanation) -> list[tuple[np.ndarray, str]]:
    """One face as a gallery row: the crop ('2.17 s, face 1 · agreement 0.62'), then each model's
    overlay ('teacher 0.81')."""
    agreement = "n/a" if face.agreement is None else f"{face.agreement:.2f}"
    return [(face.crop, f"{face.timestamp:.2f} s, {face_label(face.track_id)} · "
                        f"agreement {agreement}"),
            *((overlay(face.crop, heatmap), f"{name} {face.probs[name]:.2f}")
              for name, heatmap in face.heatmaps.items())]
