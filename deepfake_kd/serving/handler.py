"""What the web app does, testable without a server.

- `load_app_models()` loads the teacher and the student once, at start-up, from
  DEEPFAKE_KD_TEACHER / DEEPFAKE_KD_STUDENT (a folder or a Hub repo id) or the bundled
  `weights/`. Missing weights are not a crash: they are reported in `banner_markdown` and every
  request is answered with the same explanation. DEEPFAKE_KD_UNTRAINED=1 stands random-weight
  models in for missing ones, labelled loudly everywhere.
- `Analyzer` turns one request (upload, number of frames, threshold) into the page: the texts,
  the two figures, the gallery of face crops and the JSON file. Every failure a person can fix
  becomes a `gr.Error` with a message meant for them, and the next request is served normally.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from gradio_client.utils import is_http_url_like

from .analysis import (FAKE, MODEL_ROLES, NO_FACE, REAL, UNTRAINED, AnalysisResult, ModelResult,
                       analyze_video, untrained_model)
from .errors import DeepfakeKDError, ModelNotFoundError
from .faces import FaceDetector
from .limits import AppLimits
from .models import FaceClassifier, default_reference, load_model
from .models.hub import DEFAULT_REFERENCES, ENV_REFERENCES
from .plots import cost_figure, face_label, probability_figure

log = logging.getLogger(__name__)

ROLES = tuple(MODEL_ROLES)  # ("teacher", "student"): the two panels, in page order
ENV_UNTRAINED = "DEEPFAKE_KD_UNTRAINED"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
VERDICT_CLASSES = {FAKE: "fake", REAL: "real", NO_FACE: "none"}  # CSS: app.py


# --- models, loaded once ----------------------------------------------------------------------

@dataclass
class AppModels:
    """The models the app serves, where each came from, and what went wrong loading any."""

    models: dict[str, FaceClassifier]  # role -> model; a role whose weights failed is absent
    sources: dict[str, str]  # role -> the reference it was loaded from, or UNTRAINED
    problems: dict[str, str] = field(default_factory=dict)  # role -> why it did not load
    untrained: list[str] = field(default_factory=list)  # roles running on random weights

    @property
    def ready(self) -> bool:
        return all(role in self.models for role in ROLES)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def load_app_models(*, untrained: bool | None = None) -> AppModels:
    """Each role from its environment variable or the bundled weights; never raises for weights
    that are missing or broken. `untrained` (default: DEEPFAKE_KD_UNTRAINED) builds random
    weights for the roles that failed."""
    untrained = env_flag(ENV_UNTRAINED) if untrained is None else untrained
    loaded = AppModels(models={}, sources={})
    for role, cls in MODEL_ROLES.items():
        reference = default_reference(role)
        try:
            loaded.models[role] = load_model(reference).eval()
            loaded.sources[role] = reference
            continue
        except Exception as exc:  # a half-written or foreign folder must not stop the app
            loaded.problems[role] = load_problem(role, reference, exc)
        if untrained:
            loaded.models[role] = untrained_model(role, cls)  # as the CLI's --untrained
            loaded.sources[role] = UNTRAINED
            loaded.untrained.append(role)
    return loaded


def load_problem(role: str, reference: str, exc: Exception) -> str:
    variable = ENV_REFERENCES[role]
    if isinstance(exc, ModelNotFoundError) and reference == str(DEFAULT_REFERENCES[role]):
        return (f"`{short_path(reference)}` does not exist yet (the {role} is not trained or "
                f"not downloaded), and `{variable}` is not set.")
    origin = f"`{variable}={reference}`" if os.environ.get(variable) else f"`{reference}`"
    detail = str(exc) if isinstance(exc, DeepfakeKDError) else f"{type(exc).__name__}: {exc}"
    return f"{origin}: {detail}"


def short_path(reference: str) -> str:
    """A path inside the project relative to it (weights/teacher), anything else as given."""
    try:
        return str(Path(reference).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return reference


def describe_source(source: str) -> str:
    """Where weights came from, for people: a local folder, a Hub repo, or random weights."""
    if source == UNTRAINED:
        return "**RANDOM WEIGHTS** (untrained)"
    if source == "in memory":
        return "in memory"
    if Path(source).expanduser().is_dir():
        return f"local folder `{short_path(source)}`"
    name = source.split("@")[0]
    return f"Hub [`{source}`](https://huggingface.co/{name})"


def fix_instructions() -> str:
    teacher, student = ENV_REFERENCES["teacher"], ENV_REFERENCES["student"]
    return (f"**To fix it**, point `{teacher}` and `{student}` at a folder written by "
            "`save_pretrained` (`config.json` + safetensors) or at a Hugging Face Hub repo id "
            f"`owner/name[@revision]`, and restart the app, e.g. `{teacher}=runs/teacher/best "
            f"{student}=owner/deepfake-kd-student python app.py` (on a Space: set them as "
            f"variables in the Space's settings). To try the app before the models are "
            f"trained, start it with `{ENV_UNTRAINED}=1`: random weights, meaningless scores.")


def banner_markdown(app_models: AppModels) -> str:
    """The notice above the page: missing weights and how to fix them, or random weights.
    Empty when both models are trained weights that loaded."""
    parts = []
    if not app_models.ready:
        missing = [role for role in ROLES if role not in app_models.models]
        parts.append(f"### ⚠️ Model weights are missing: the {' and '.join(missing)} "
                     f"could not be loaded, so clips cannot be analysed yet")
        parts += [f"- **{role}**: {app_models.problems[role]}" for role in missing]
        parts.append(fix_instructions())
    if app_models.untrained:
        roles = " and ".join(app_models.untrained)
        parts.append(f"### ⚠️ RANDOM WEIGHTS: the {roles} "
                     f"{'is' if len(app_models.untrained) == 1 else 'are'} untrained "
                     f"(`{ENV_UNTRAINED}=1`)")
        parts += [f"- **{role}**: {app_models.problems[role]}" for role in app_models.untrained
                  if role in app_models.problems]
        parts.append("Their fake probabilities and verdicts mean **nothing**; the pipeline, "
                     "the inference times and the parameter counts are real.")
    return "\n\n".join(parts)


def not_ready_message(app_models: AppModels) -> str:
    missing = [role for role in ROLES if role not in app_models.models]
    variables = " / ".join(ENV_REFERENCES[role] for role in missing)
    return (f"The {' and '.join(missing)} weights are missing, so this app cannot analyse clips "
            f"yet. Set {variables} to a weights folder or a Hub repo id (owner/name) and restart "
            f"the app, or start it with {ENV_UNTRAINED}=1 to try it with random weights.")


# --- one request --------------------------------------------------------------------------

@dataclass
class Report:
    """Everything the page shows for one analysed clip."""

    result: AnalysisResult
    summary: str
    panels: dict[str, str]  # role -> markdown
    probability: go.Figure
    cost: go.Figure
    gallery: list[tuple[np.ndarray, str]]  # (crop, caption)
    json_path: Path

    def outputs(self) -> tuple:
        """In the order of `Analyzer.OUTPUTS`."""
        return (self.summary, *(self.panels[role] for role in ROLES), self.probability,
                self.cost, self.gallery, str(self.json_path))


class UserError(gr.Error):
    """A message for the person at the page; no traceback in the server log."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


class Analyzer:
    """Holds the models and the face detector for the app's lifetime and serves requests."""

    OUTPUTS = ("summary", *(f"panel_{role}" for role in ROLES), "probability", "cost",
               "gallery", "json")

    def __init__(self, app_models: AppModels, *, detector: FaceDetector | None = None,
                 limits: AppLimits = AppLimits(), results_dir: str | Path | None = None):
        self.app_models = app_models
        self.detector = detector or FaceDetector()
        self.limits = limits
        self.results_dir = Path(results_dir or results_folder())

    def handle(self, video, num_frames, threshold, progress=gr.Progress()) -> tuple:
        """The Analyze button: the page's outputs, in the order of `OUTPUTS`."""
        report = self.analyze(video, num_frames, threshold,
                              progress=lambda fraction, text: progress(fraction, desc=text))
        return report.outputs()

    def analyze(self, video, num_frames, threshold,
                progress: Callable[[float, str], None] | None = None) -> Report:
        """Check the request, analyse the clip, render the result; raises `gr.Error` with a
        message for people on anything a person can fix, and on anything unexpected."""
        if not self.app_models.ready:
            raise UserError(not_ready_message(self.app_models))
        path = check_upload(video)
        if not path.exists():  # say so without the server's folders in the message
            raise UserError(f"{path.name}: no such file on the server (uploads are deleted "
                            f"after {self.limits.cache_ttl_s / 60:g} minutes); upload the clip "
                            "again.")
        frames = check_frames(num_frames, self.limits.analysis.max_frames)
        threshold = check_threshold(threshold)
        try:
            result = analyze_video(path, self.app_models.models, num_frames=frames,
                                   threshold=threshold, detector=self.detector,
                                   limits=self.limits.analysis, sources=self.app_models.sources,
                                   progress=progress)
        except DeepfakeKDError as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:  # a bug or a file no check foresaw: log it, tell the person
            log.exception("analysis of %s failed", path)
            raise UserError(f"{path.name}: the analysis failed unexpectedly "
                            f"({type(exc).__name__}). Try another clip, or re-encode this one "
                            "as H.264 MP4.") from None
        return self.render(result)

    def render(self, result: AnalysisResult) -> Report:
        return Report(
            result=result, summary=summary_markdown(result),
            panels={role: panel_markdown(role, self.app_models, result) for role in ROLES},
            probability=probability_figure(result), cost=cost_figure(result),
            gallery=gallery_items(result, self.limits.max_gallery),
            json_path=self.write_json(result))

    def idle_panel(self, role: str) -> str:
        """A panel before any analysis: the model's size and weights, or why it is missing."""
        return panel_markdown(role, self.app_models, None)

    def write_json(self, result: AnalysisResult) -> Path:
        """The full result as a JSON file in a folder of its own (older ones are removed)."""
        prune(self.results_dir, older_than_s=self.limits.cache_ttl_s)
        folder = self.results_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        path = folder / f"{safe_stem(result.path)}-deepfake-kd.json"
        path.write_text(json.dumps(result.to_dict(), indent=2))
        return path


def results_folder() -> Path:
    """Where the app writes result files: inside Gradio's cache folder (GRADIO_TEMP_DIR,
    default <tmp>/gradio), so Gradio hands them out without copying them again and deletes
    them with the uploads (`delete_cache`) and when the server stops."""
    return Path(gr.utils.get_upload_folder()) / "deepfake-kd-results"


def safe_stem(path: str) -> str:
    """A file name made from an upload's name: letters (any script), digits, '-', '_' and '.'
    only, at most 80 characters, never empty or hidden, so nothing in the name can lead out of
    the results folder."""
    stem = re.sub(r"[^\w.-]+", "_", Path(str(path)).stem).strip("._-")[:80]
    while len(stem.encode()) > 160:  # file names are at most 255 bytes
        stem = stem[:-1]
    return stem or "clip"


def prune(folder: Path, *, older_than_s: float) -> None:
    if not folder.is_dir():
        return
    cutoff = time.time() - older_than_s
    for child in folder.iterdir():
        try:
            if child.is_dir() and child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            pass  # another request removed it first


LINK_REFUSED = ("Upload the clip itself: this app does not fetch links (a file named by URL "
                "would be downloaded before its size could be checked).")


def refuse_links(component):
    """Make a file input take only files uploaded to this server. Gradio downloads any http(s)
    URL that a client names as a file input's path, before the handler runs and with no size
    limit, so a hand-made API call could make the server fetch a file of any size. The page and
    gradio_client always upload (with the size limit enforced while the upload streams in)."""
    move, async_move = (component.move_resource_to_block_cache,
                        component.async_move_resource_to_block_cache)

    def local_only(url_or_file_path):
        if is_http_url_like(str(url_or_file_path)):
            raise UserError(LINK_REFUSED)
        return move(url_or_file_path)

    async def async_local_only(url_or_file_path):
        if is_http_url_like(str(url_or_file_path)):
            raise UserError(LINK_REFUSED)
        return await async_move(url_or_file_path)

    component.move_resource_to_block_cache = local_only
    component.async_move_resource_to_block_cache = async_local_only
    return component


def check_upload(video) -> Path:
    """The upload's path; gradio passes a path string (or a FileData-like dict)."""
    if isinstance(video, dict):
        video = video.get("path") or video.get("video")
    if not video:
        raise UserError("No clip yet: upload a video (or pick an example), then press Analyze.")
    return Path(str(video))


def check_frames(value, maximum: int) -> int:
    try:
        frames = float(value)
    except (TypeError, ValueError):
        raise UserError(f"Frames to sample must be a whole number, got {value!r}.") from None
    if not (math.isfinite(frames) and frames == int(frames) and 1 <= frames <= maximum):
        raise UserError(f"Frames to sample must be a whole number from 1 to {maximum}, "
                        f"got {value!r}.")
    return int(frames)


def check_threshold(value) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:  # also NaN
        raise UserError(f"The threshold must be a probability between 0 and 1, got {value!r}.")
    return threshold


# --- texts and gallery ----------------------------------------------------------------------

def times(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:,.0f}×"


def millions(count: int) -> str:
    """94,624,976 -> '94.62 M'; small counts as they are."""
    return f"{count / 1e6:,.2f} M" if count >= 1e5 else f"{count:,}"


def panel_markdown(role: str, app_models: AppModels, result: AnalysisResult | None) -> str:
    """One model's column: verdict, clip-level fake probability, inference time, parameters,
    and where its weights came from."""
    lines = [f"### {role.capitalize()}"]
    model = app_models.models.get(role)
    if model is None:
        return "\n\n".join(lines + [verdict_badge("WEIGHTS MISSING"),
                                    app_models.problems.get(role, "not loaded")])
    if role in app_models.untrained:
        lines.append("**⚠️ RANDOM WEIGHTS: this model's scores are meaningless**")
    scores: ModelResult | None = result.models.get(role) if result else None
    if scores is None:
        lines.append(verdict_badge("—"))
        rows = ["**Fake probability:** upload a clip and press **Analyze**"]
    else:
        lines.append(verdict_badge(f"{scores.verdict} (random weights)", kind="none")
                     if role in app_models.untrained else verdict_badge(scores.verdict))
        rows = [f"**Fake probability (clip):** {probability_text(scores, result)}",
                f"**Inference:** {inference_text(scores, len(result.faces))}"]
    count = model.num_parameters()
    rows += [f"**Parameters:** {count:,}" + (f" ({millions(count)})" if count >= 1e5 else ""),
             f"**Weights:** {describe_source(app_models.sources[role])}"]
    return "\n\n".join(lines) + "\n\n" + "\n".join(f"- {row}" for row in rows)


def verdict_badge(verdict: str, kind: str | None = None) -> str:
    """The verdict as a coloured label (plain text where HTML is not rendered)."""
    kind = kind or VERDICT_CLASSES.get(verdict, "none")
    return f'<span class="verdict verdict-{kind}">{verdict}</span>'


def probability_text(scores: ModelResult, result: AnalysisResult) -> str:
    if scores.video_prob is None:
        return "— (no face to score)"
    text = f"**{scores.video_prob:.3f}** (threshold {result.threshold:g})"
    if len(scores.track_probs) > 1:
        text += "; per face: " + ", ".join(
            f"{face_label(track)} {p:.3f}" for track, p in scores.track_probs.items())
    return text


def inference_text(scores: ModelResult, num_faces: int) -> str:
    if not num_faces:
        return "— (no faces)"
    return (f"{scores.inference_ms:,.0f} ms in all, **{scores.ms_per_face:.1f} ms per face** "
            f"({num_faces} face{'s' if num_faces != 1 else ''})")


def summary_markdown(result: AnalysisResult) -> str:
    """The clip in one line, then how much faster and smaller the student is on it, and
    whether the two models agree."""
    faced = sum(frame.num_faces > 0 for frame in result.frames)
    lines = [
        f"**{Path(result.path).name}**: {result.width}×{result.height}, {result.duration:.1f} s. "
        f"{len(result.frames)} frames sampled, a face in {faced}; {len(result.faces)} face crops "
        f"in {len(result.tracks)} track{'s' if len(result.tracks) != 1 else ''}. Sampling "
        f"{result.timings_ms['sampling'] / 1000:.2f} s, face detection "
        f"{result.timings_ms['detection'] / 1000:.2f} s (done once, shared by the models)."]
    if result.failed_frames:
        lines.append(lost_frames_text(result))
    teacher, student = result.models.get("teacher"), result.models.get("student")
    if teacher and student:
        size = teacher.num_parameters / max(student.num_parameters, 1)
        smaller = (f"**{times(size)} smaller**" if size >= 1 else f"**{times(1 / size)} larger**")
        sizes = (f"{millions(student.num_parameters)} vs {millions(teacher.num_parameters)} "
                 "parameters")
        if result.no_face:
            lines.append(f"The student is {smaller} than the teacher ({sizes}); with no face "
                         "in the clip, neither model ran, so there is no time to compare.")
        else:
            speed = teacher.ms_per_face / max(student.ms_per_face, 1e-9)
            faster = (f"**{times(speed)} faster**" if speed >= 1
                      else f"**{times(1 / speed)} slower**")
            lines.append(f"On this clip the student is {faster} than the teacher "
                         f"({student.ms_per_face:.1f} vs {teacher.ms_per_face:.1f} ms per face) "
                         f"and {smaller} ({sizes}).")
            if teacher.verdict == student.verdict:
                lines.append(f"Both models say **{teacher.verdict}**.")
            else:
                lines.append(f"The models disagree: the teacher says **{teacher.verdict}**, "
                             f"the student **{student.verdict}**.")
    if result.no_face:
        lines.append("**No face was found in any sampled frame**, so nothing was scored. Try a "
                     "clip where a face is visible, lit and at least 64 pixels tall, or sample "
                     "more frames.")
    return "\n\n".join(lines)


def lost_frames_text(result: AnalysisResult, shown: int = 12) -> str:
    """Which sampled frames did not decode (a damaged or truncated file), and that the scores
    are from the others."""
    lost = result.failed_frames
    moments = ", ".join(f"{index / result.fps:.2f} s" for index in lost[:shown])
    more = f", and {len(lost) - shown} more" if len(lost) > shown else ""
    return (f"**⚠️ {len(lost)} of the {len(lost) + len(result.frames)} sampled frames could not "
            f"be decoded** (at {moments}{more}): the file is damaged "
            "or cut short there. The scores are from the frames that did decode; "
            "re-encode the clip as H.264 MP4 to analyse all of it.")


def gallery_items(result: AnalysisResult, limit: int) -> list[tuple[np.ndarray, str]]:
    """Up to `limit` face crops, spread over the clip, each captioned with every model's score."""
    faces = result.faces
    if len(faces) > limit:
        picks = np.unique(np.linspace(0, len(faces) - 1, limit).round().astype(int))
        faces = [faces[i] for i in picks]
    return [(face.crop, " · ".join(f"{name} {p:.2f}" for name, p in face.probs.items())
             + f" ({face.timestamp:.2f} s, {face_label(face.track_id)})")
            for face in faces]
