"""What the page says: the model panels, the summary, the banner about missing or random
weights, the gallery captions, and the messages for people. Plain functions of a result and
the loaded models, testable without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..pipeline.analysis import FAKE, NO_FACE, REAL, AnalysisResult, ModelResult
from ..pipeline.runtime import RUNTIME_LABELS
from ..pipeline.tta import TTA_LABELS
from ..roles import ENV_UNTRAINED, ROLES, STUDENT, TEACHER, UNTRAINED, short_path
from .loading import AppModels
from .plots import face_label

VERDICT_CLASSES = {FAKE: "fake", REAL: "real", NO_FACE: "none"}  # CSS: app.py
LINK_REFUSED = ("Upload the clip itself: this app does not fetch links (a file named by URL "
                "would be downloaded before its size could be checked).")


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
    teacher, student = ROLES[TEACHER].env, ROLES[STUDENT].env
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
    parts += [f"- **{role}** {why}" for role, why in app_models.fallbacks.items()]
    return "\n\n".join(parts)


def not_ready_message(app_models: AppModels) -> str:
    missing = [role for role in ROLES if role not in app_models.models]
    variables = " / ".join(ROLES[role].env for role in missing)
    return (f"The {' and '.join(missing)} weights are missing, so this app cannot analyse clips "
            f"yet. Set {variables} to a weights folder or a Hub repo id (owner/name) and restart "
            f"the app, or start it with {ENV_UNTRAINED}=1 to try it with random weights.")


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
    if scores is None and result is not None:  # the smaller model answered first
        lines.append(verdict_badge("SCORING…", kind="none"))
        rows = ["**Fake probability (clip):** still scoring the same faces"]
    elif scores is None:
        lines.append(verdict_badge("—"))
        rows = ["**Fake probability:** upload a clip and press **Analyze**"]
    else:
        lines.append(verdict_badge(f"{scores.verdict} (random weights)", kind="none")
                     if role in app_models.untrained else verdict_badge(scores.verdict))
        rows = [f"**Fake probability (clip):** {probability_text(scores, result)}",
                f"**Inference:** {inference_text(scores, len(result.faces))}"]
    count = model.num_parameters()
    rows += [f"**Parameters:** {count:,}" + (f" ({millions(count)})" if count >= 1e5 else ""),
             f"**Weights:** {describe_source(app_models.sources[role])}",
             f"**Runs on:** {RUNTIME_LABELS[model.runtime]}"
             + (f", {TTA_LABELS[model.tta]}" if model.tta != "none" else "")]
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


def summary_markdown(result: AnalysisResult, pending: Sequence[str] = ()) -> str:
    """The clip in one line, then how much faster and smaller the student is on it, and
    whether the two models agree; while models in `pending` still score, that they do."""
    faced = sum(frame.num_faces > 0 for frame in result.frames)
    lines = [
        f"**{Path(result.path).name}**: {result.width}×{result.height}, {result.duration:.1f} s. "
        f"{len(result.frames)} frames sampled, a face in {faced}; {len(result.faces)} face crops "
        f"in {len(result.tracks)} track{'s' if len(result.tracks) != 1 else ''}. Sampling "
        f"{result.timings_ms['sampling'] / 1000:.2f} s, face detection "
        f"{result.timings_ms['detection'] / 1000:.2f} s (done once, shared by the models)."]
    if result.failed_frames:
        lines.append(lost_frames_text(result))
    if pending:
        answered = " and ".join(f"the {name}'s" for name in result.models)
        lines.append(f"**The {' and '.join(pending)} {'is' if len(pending) == 1 else 'are'} "
                     f"still scoring** the same faces; meanwhile, {answered} answer.")
    teacher, student = result.models.get(TEACHER), result.models.get(STUDENT)
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
