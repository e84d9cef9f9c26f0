"""Plotly figures from an `AnalysisResult`: what the app draws, built without a server.

- `probability_figure`: fake probability per sampled frame against time, one trace per model
  (per model and face track when the clip shows several people), the decision threshold as a
  dashed line, and frames where no face was found marked on the time axis.
- `cost_figure`: what each model costs: parameters and inference time per face.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..pipeline.analysis import AnalysisResult, FaceScore
from ..roles import STUDENT, TEACHER

MODEL_COLOURS = {TEACHER: "#3b5bdb", STUDENT: "#e8590c"}
OTHER_COLOURS = ["#2b8a3e", "#862e9c", "#c2255c", "#1098ad"]
TRACK_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
NO_FACE_COLOUR = "#868e96"
HEIGHT = 380


def model_colour(name: str, position: int) -> str:
    return MODEL_COLOURS.get(name, OTHER_COLOURS[position % len(OTHER_COLOURS)])


def face_label(track_id: int) -> str:
    """Tracks are numbered from 0; people read 'face 1', 'face 2'."""
    return f"face {track_id + 1}"


def probability_figure(result: AnalysisResult) -> go.Figure:
    """Fake probability against time in seconds. Every model trace has one point per sampled
    (decoded) frame, None where its face is absent, so a line breaks where the face leaves."""
    times = [frame.timestamp for frame in result.frames]
    face_at: dict[tuple[int, int], FaceScore] = {
        (face.track_id, face.frame_index): face for face in result.faces}
    several = len(result.tracks) > 1
    figure = go.Figure()
    for position, name in enumerate(result.models):
        colour = model_colour(name, position)
        for k, track in enumerate(result.tracks or [None]):
            track_id = track.track_id if track else -1
            probs = [face_at[track_id, frame.index].probs[name]
                     if (track_id, frame.index) in face_at else None
                     for frame in result.frames]
            label = name
            if several:
                label += f" · {face_label(track_id)}" + ("" if track.counted else " (brief)")
            figure.add_trace(go.Scatter(
                x=times, y=probs, name=label, mode="lines+markers", legendgroup=name,
                line=dict(color=colour, width=2.5, dash=TRACK_DASHES[k % len(TRACK_DASHES)]),
                marker=dict(size=7), connectgaps=False,
                customdata=[frame.index for frame in result.frames],
                hovertemplate=f"{label}<br>%{{x:.2f}} s (frame %{{customdata}})<br>"
                              "p(fake) %{y:.3f}<extra></extra>"))
    no_face = [frame for frame in result.frames if frame.num_faces == 0]
    if no_face:
        figure.add_trace(go.Scatter(
            x=[frame.timestamp for frame in no_face], y=[0.0] * len(no_face), name="no face",
            mode="markers", marker=dict(symbol="x-thin", size=11, color=NO_FACE_COLOUR,
                                        line=dict(width=2, color=NO_FACE_COLOUR)),
            customdata=[frame.index for frame in no_face],
            hovertemplate="%{x:.2f} s (frame %{customdata}): no face found<extra></extra>"))
        for x0, x1 in no_face_spans(result):  # light bands make the gaps readable at a glance
            figure.add_vrect(x0=x0, x1=x1, fillcolor=NO_FACE_COLOUR, opacity=0.12, line_width=0,
                             layer="below")
    if result.failed_frames:
        failed = [index / result.fps for index in result.failed_frames]
        figure.add_trace(go.Scatter(
            x=failed, y=[0.0] * len(failed), name="not decoded", mode="markers",
            marker=dict(symbol="square-open", size=9, color="#c92a2a"),
            hovertemplate="%{x:.2f} s: frame did not decode<extra></extra>"))
    figure.add_hline(y=result.threshold, line=dict(color="#c92a2a", dash="dash", width=1.5),
                     annotation_text=f"threshold {result.threshold:g}",
                     annotation_position="top right", annotation_font_color="#c92a2a")
    title = "Fake probability per frame"
    if result.no_face:
        title += ": no face found in any sampled frame"
    figure.update_layout(
        title=dict(text=title, x=0.01), template="plotly_white", height=HEIGHT,
        margin=dict(l=60, r=20, t=70, b=50), hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        xaxis=dict(title="time (s)", range=[0, max(result.duration, max(times, default=0))]),
        yaxis=dict(title="fake probability", range=[-0.04, 1.04]))
    return figure


def no_face_spans(result: AnalysisResult) -> list[tuple[float, float]]:
    """Time spans of runs of sampled frames without a face, each reaching half-way to the
    neighbouring sampled frames (or by half a frame gap at either end of the clip)."""
    times = [frame.timestamp for frame in result.frames]
    gaps = [b - a for a, b in zip(times, times[1:])]
    edge = (min(gaps) if gaps else 1 / result.fps) / 2
    spans: list[tuple[float, float]] = []
    for k, frame in enumerate(result.frames):
        if frame.num_faces:
            continue
        x0 = (times[k - 1] + times[k]) / 2 if k > 0 else max(0.0, times[k] - edge)
        x1 = (times[k] + times[k + 1]) / 2 if k + 1 < len(times) else times[k] + edge
        if spans and k > 0 and result.frames[k - 1].num_faces == 0:
            spans[-1] = (spans[-1][0], x1)  # continues the previous run
        else:
            spans.append((x0, x1))
    return spans


def count_text(count: int) -> str:
    """A parameter count for a bar label: '94.6 M', '412 k', '1,021'."""
    if count >= 1e6:
        return f"{count / 1e6:,.1f} M"
    return f"{count / 1e3:,.0f} k" if count >= 1e4 else f"{count:,}"


def cost_figure(result: AnalysisResult) -> go.Figure:
    """Two bar charts side by side: parameters (millions) and inference time per face (ms)."""
    names = list(result.models)
    models = [result.models[name] for name in names]
    colours = [model_colour(name, k) for k, name in enumerate(names)]
    scored = not result.no_face
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.18, subplot_titles=(
        "Parameters (millions)",
        "Inference per face (ms)" if scored else "Inference per face: no faces scored"))
    params = [m.num_parameters / 1e6 for m in models]
    figure.add_trace(go.Bar(
        x=names, y=params, name="parameters", marker_color=colours, showlegend=False,
        text=[count_text(m.num_parameters) for m in models], textposition="outside",
        cliponaxis=False,
        hovertemplate="%{x}: %{y:,.3f} M parameters<extra></extra>"), row=1, col=1)
    per_face = [m.ms_per_face for m in models]
    figure.add_trace(go.Bar(
        x=names, y=per_face, name="ms per face", marker_color=colours, showlegend=False,
        text=[f"{ms:.1f} ms" for ms in per_face], textposition="outside", cliponaxis=False,
        customdata=[m.inference_ms for m in models],
        hovertemplate="%{x}: %{y:.2f} ms per face, %{customdata:.0f} ms in all"
                      "<extra></extra>"), row=1, col=2)
    figure.update_yaxes(rangemode="tozero", range=[0, 1.2 * max(params, default=1)],
                        row=1, col=1)
    figure.update_yaxes(rangemode="tozero", range=[0, 1.2 * max(max(per_face, default=0), 1)],
                        row=1, col=2)
    figure.update_layout(template="plotly_white", height=320, margin=dict(l=50, r=20, t=50, b=40))
    return figure
