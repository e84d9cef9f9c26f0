"""The web app: the request handling behind the Analyze button (called directly), the app
served on 127.0.0.1 and called with gradio_client, and the page in headless Chromium.

Everything runs with the tiny models of conftest on small generated clips."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.limits import AppLimits, Limits
from deepfake_kd.models import CrossEfficientViT, StudentCNN
from deepfake_kd.pipeline.analysis import FAKE, NO_FACE, REAL
from deepfake_kd.roles import ROLES, UNTRAINED
from deepfake_kd.serving.examples import example_clips
from deepfake_kd.serving.explaining import EXPLAIN_IDLE, NOTHING_TO_EXPLAIN, Explainer
from deepfake_kd.serving.handler import Analyzer, gallery_files
from deepfake_kd.serving.loading import AppModels, load_app_models
from deepfake_kd.serving.texts import banner_markdown, panel_markdown, times

# gradio's queue calls pandas options that pandas 3 deprecates: not this project's to fix
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

HUB_ID = "someone/deepfake-kd-student"  # a source label only: nothing is downloaded
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def app_models(tiny_models, model_dirs) -> AppModels:
    return AppModels(models=tiny_models,
                     sources={"teacher": str(model_dirs["teacher"]), "student": HUB_ID})


@pytest.fixture(scope="module")
def analyzer(app_models, detector, tmp_path_factory) -> Analyzer:
    return Analyzer(app_models, detector=detector,
                    results_dir=tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def progress_log() -> list:
    return []


@pytest.fixture(scope="module")
def report(analyzer, face_clip, progress_log):
    """face_clip: 12 frames, all sampled; a face in frames 2-9 only."""
    return analyzer.analyze(str(face_clip), 12, 0.55,
                            progress=lambda fraction, text: progress_log.append((fraction, text)))


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[Path]:
    return example_clips(tmp_path_factory.mktemp("examples"))


def traces(figure) -> dict:
    return {trace.name: trace for trace in figure.data}


# --- the handler, called directly ---------------------------------------------------------------

def test_probability_chart_one_trace_per_model_one_point_per_frame(report, face_frame_indices):
    result, figure = report.result, report.probability
    by_name = traces(figure)
    assert set(by_name) == {"teacher", "student", "no face"}
    frame_times = [frame.timestamp for frame in result.frames]
    assert frame_times == pytest.approx([i / 10 for i in range(12)])
    for name in ROLES:
        trace = by_name[name]
        assert list(trace.x) == frame_times
        expected = {face.frame_index: face.probs[name] for face in result.faces}
        assert list(trace.y) == [expected.get(i) for i in range(12)]  # None: no face there
        assert [i for i, y in enumerate(trace.y) if y is not None] == face_frame_indices
    no_face = [i for i in range(12) if i not in face_frame_indices]
    assert list(by_name["no face"].x) == pytest.approx([i / 10 for i in no_face])
    threshold = [shape for shape in figure.layout.shapes if shape.y0 == shape.y1]
    assert len(threshold) == 1 and threshold[0].y0 == 0.55
    bands = [x for shape in figure.layout.shapes if shape.type == "rect"
             for x in (shape.x0, shape.x1)]
    assert bands == pytest.approx([0.0, 0.15, 0.95, 1.15])  # frames 0-1 and 10-11
    assert figure.layout.xaxis.title.text == "time (s)"


def test_cost_chart_compares_parameters_and_time(report, tiny_models):
    params, per_face = report.cost.data
    assert list(params.x) == list(per_face.x) == ["teacher", "student"]
    assert list(params.y) == pytest.approx(
        [tiny_models[name].num_parameters() / 1e6 for name in ROLES])
    assert list(per_face.y) == pytest.approx(
        [report.result.models[name].ms_per_face for name in ROLES])


def test_texts_hold_the_numbers(report, tiny_models, model_dirs):
    result = report.result
    for role in ROLES:
        scores, panel = result.models[role], report.panels[role]
        assert f"verdict-{scores.verdict.lower()}\">{scores.verdict}<" in panel
        assert f"**{scores.video_prob:.3f}** (threshold 0.55)" in panel
        assert f"{scores.inference_ms:,.0f} ms in all" in panel
        assert f"**{scores.ms_per_face:.1f} ms per face** (8 faces)" in panel
        assert f"**Parameters:** {tiny_models[role].num_parameters():,}" in panel
    assert f"local folder `{model_dirs['teacher']}`" in report.panels["teacher"]
    assert f"Hub [`{HUB_ID}`](https://huggingface.co/{HUB_ID})" in report.panels["student"]
    teacher, student = result.models["teacher"], result.models["student"]
    speed = teacher.ms_per_face / student.ms_per_face
    size = teacher.num_parameters / student.num_parameters
    assert speed > 1 and size > 1  # true of the tiny models too
    assert f"**{times(speed)} faster**" in report.summary
    assert f"**{times(size)} smaller**" in report.summary
    assert "12 frames sampled, a face in 8; 8 face crops in 1 track" in report.summary
    agree = teacher.verdict == student.verdict
    assert ("Both models say" in report.summary) == agree
    assert ("The models disagree" in report.summary) == (not agree)


def test_gallery_captions_carry_both_scores_and_json_has_everything(report):
    result = report.result
    assert len(report.gallery) == 8
    for (crop, caption), face in zip(report.gallery, result.faces):
        assert crop.shape == (224, 224, 3) and np.array_equal(crop, face.crop)
        assert caption.startswith(f"teacher {face.probs['teacher']:.2f} · "
                                  f"student {face.probs['student']:.2f} (")
        assert f"{face.timestamp:.2f} s, face 1" in caption
    data = json.loads(report.json_path.read_text())
    assert data == json.loads(json.dumps(result.to_dict()))
    assert len(data["frames"]) == 12 and len(data["faces"]) == 8
    assert report.json_path.name == "face-deepfake-kd.json"


def test_progress_goes_through_sampling_detection_and_each_model(progress_log):
    fractions = [fraction for fraction, _ in progress_log]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    stages = [text for _, text in progress_log]
    for stage in ("Sampling frames", "Detecting faces", "Scoring faces: teacher",
                  "Scoring faces: student"):
        assert stage in stages


def test_the_student_answers_first_and_the_teacher_completes_the_page(analyzer, face_clip):
    """The handler yields the page twice: the student's answer while the teacher still
    scores, then everything (the JSON only then)."""
    first, final = analyzer.reports(str(face_clip), 12, 0.55)
    assert list(first.result.models) == ["student"] and first.json_path is None
    assert "SCORING…" in first.panels["teacher"] and "still scoring" in first.panels["teacher"]
    student = first.result.models["student"]
    assert f"**{student.video_prob:.3f}** (threshold 0.55)" in first.panels["student"]
    assert "The teacher is still scoring" in first.summary and "faster" not in first.summary
    assert [name for name in traces(first.probability) if name in ROLES] == ["student"]
    assert all(set(face.probs) == {"student"} for face in first.result.faces)
    assert list(final.result.models) == list(ROLES)  # the order given, not the order scored
    assert final.result.models["student"] == student  # the same scores, not scored again
    assert final.json_path.is_file() and "SCORING" not in final.panels["teacher"]
    assert "still scoring" not in final.summary


def test_several_people_give_one_trace_per_model_and_face(analyzer, examples):
    report = analyzer.analyze(str(examples[1]), 6, 0.55)  # two people; the second from 1 s
    by_name = traces(report.probability)
    expected = [f"{role} · face {n}" for role in ROLES for n in (1, 2)]
    assert [name for name in by_name if name != "no face"] == expected
    for name in expected:
        assert len(by_name[name].x) == 6
    late = by_name["teacher · face 2"]
    assert [y is None for y in late.y] == [t < 1.0 for t in late.x]
    assert "face 1" in report.panels["teacher"] and "per face:" in report.panels["teacher"]
    assert "2 tracks" in report.summary
    assert {caption.split("(")[1].split(", ")[1] for _, caption in report.gallery} == {
        "face 1)", "face 2)"}


def test_a_clip_without_faces_is_explained(analyzer, no_face_clip):
    report = analyzer.analyze(str(no_face_clip), 6, 0.5)
    assert report.result.no_face and report.gallery == []
    by_name = traces(report.probability)
    for role in ROLES:
        assert list(by_name[role].y) == [None] * 6
        assert f'verdict-none">{NO_FACE}<' in report.panels[role]
    assert len(by_name["no face"].x) == 6
    assert "no face found" in report.probability.layout.title.text
    assert "No face was found in any sampled frame" in report.summary
    assert "smaller" in report.summary and "faster" not in report.summary


def test_gallery_pictures_are_files_of_the_request_written_once(report, tmp_path):
    """The page gets the crops as files in the request's own folder, named by content: an
    answer that shows the same face again reuses the file and never rewrites it (Gradio's own
    saving rewrites it in place, which a concurrent download of it reads half-written)."""
    shown = report.outputs()[Analyzer.OUTPUTS.index("gallery")]
    assert [caption for _, caption in shown] == [caption for _, caption in report.gallery]
    for (path, _), (crop, _) in zip(shown, report.gallery):
        assert Path(path).parent == report.folder and close_to(picture(path), crop)
    before = {path: os.stat(path).st_ino for path, _ in shown}
    again = gallery_files(report.gallery[:2] + report.gallery[:1], report.folder)
    assert [path for path, _ in again] == [shown[0][0], shown[1][0], shown[0][0]]
    assert all(os.stat(path).st_ino == before[path] for path, _ in again)
    elsewhere = gallery_files(report.gallery[:1], tmp_path)
    assert Path(elsewhere[0][0]).parent == tmp_path


def test_gallery_is_capped_and_spread_over_the_clip(app_models, detector, report):
    capped = Analyzer(app_models, detector=detector, limits=AppLimits(max_gallery=3))
    captions = [caption for _, caption in capped.render(report.result).gallery]
    assert len(captions) == 3
    assert "(0.20 s" in captions[0] and "(0.90 s" in captions[-1]  # first and last face


# --- where the models look -------------------------------------------------------------------

@pytest.fixture(scope="module")
def explainer(app_models, analyzer) -> Explainer:
    """The tiny teacher's logit layers start at zero, which makes its heatmaps zero: a copy with
    random ones, so every agreement is a number."""
    teacher = copy.deepcopy(app_models.models["teacher"])
    for head in (teacher.sm_head, teacher.lg_head):
        torch.nn.init.normal_(head[-1].weight)
    return Explainer(AppModels(models={**app_models.models, "teacher": teacher.eval()},
                               sources=app_models.sources), analyzer.recent, analyzer.files)


def picture(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def close_to(decoded: np.ndarray, original: np.ndarray) -> bool:
    """A lossy WebP picture of `original`: the same shape, within a few levels on average."""
    return (decoded.shape == original.shape
            and np.abs(decoded.astype(int) - original.astype(int)).mean() < 6)


def test_heatmaps_of_the_most_suspicious_faces_side_by_side(explainer, report):
    result = report.result
    assert explainer.pending_top(None) == EXPLAIN_IDLE
    assert "on the 4 most suspicious faces (teacher and student" in explainer.pending_top(
        str(report.json_path))
    status, pictures = explainer.top(str(report.json_path))
    rows = [pictures[k:k + 3] for k in range(0, len(pictures), 3)]  # crop | teacher | student
    assert len(rows) == 4
    worst = sorted(result.faces, key=lambda face: -max(face.probs.values()))[:4]
    for (crop, about), (teacher, teacher_score), (student, student_score), face in zip(
            *zip(*rows), worst):
        assert close_to(picture(crop), face.crop)
        assert picture(teacher).shape == picture(student).shape == (224, 224, 3)
        assert teacher_score == f"teacher {face.probs['teacher']:.2f}"
        assert student_score == f"student {face.probs['student']:.2f}"
        time, agreement = about.split(" · ")
        assert time == f"{face.timestamp:.2f} s, face 1"
        assert -1 <= float(agreement.removeprefix("agreement ")) <= 1
    assert "the 4 faces with the highest fake probability" in status
    assert "mean agreement **" in status and "Computed after the verdicts" in status


def test_heatmaps_of_a_chosen_frame(explainer, report):
    result, page = report.result, {"path": str(report.json_path)}  # the page's result file
    face = result.faces[2]
    assert f"nearest to {face.timestamp:.2f} s" in explainer.pending_frame(page, face.timestamp)
    status, pictures = explainer.frame(page, face.timestamp)
    assert len(pictures) == 3 and pictures[0][1].startswith(f"{face.timestamp:.2f} s, face 1 · ")
    assert f"the frame at {face.timestamp:.2f} s:" in status
    status, _ = explainer.frame(page, 0.0)  # no face there: the nearest frame with one
    assert f"the frame at {result.faces[0].timestamp:.2f} s (the sampled frame with a face " \
           "nearest to 0.00 s)" in status
    for bad in (-1, result.duration + 1, "soon", None, math.nan):
        with pytest.raises(gr.Error, match="between 0 and 1.20 s"):
            explainer.pending_frame(page, bad)
    with pytest.raises(gr.Error, match="Analyze a clip first"):
        explainer.frame(None, 0.5)
    assert explainer.pending_top(None) == EXPLAIN_IDLE


def test_no_face_no_heatmaps(explainer, analyzer, no_face_clip):
    page = str(analyzer.analyze(str(no_face_clip), 6, 0.5).json_path)
    assert explainer.pending_top(page) == NOTHING_TO_EXPLAIN
    assert explainer.top(page) == explainer.frame(page, 0.2) == (NOTHING_TO_EXPLAIN, [])


def test_only_the_last_analyses_are_kept(app_models, detector, report, tmp_path):
    small = Analyzer(app_models, detector=detector, results_dir=tmp_path,
                     limits=AppLimits(max_queue=1))
    results = [replace(report.result, threshold=t) for t in (0.3, 0.4, 0.5)]
    first, second, third = (small.render(result).json_path for result in results)
    assert small.recent.size == 2 and small.recent.get(first) is None
    assert small.recent.get(second) is results[1] and small.recent.get(third) is results[2]
    copy_of_second = tmp_path / "copy.json"  # Gradio hands handlers a copy of the page's file
    copy_of_second.write_bytes(second.read_bytes())
    assert small.recent.get(copy_of_second) is results[1]
    with pytest.raises(gr.Error, match="Analyze a clip first.*last 2 analyses"):
        Explainer(app_models, small.recent, small.files).frame(str(first), 0.5)


def bad_uploads(tmp_path: Path, face_clip: Path, astronaut: Path) -> dict:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(face_clip.read_bytes()[:face_clip.stat().st_size // 3])
    return {"text": (text, "not a readable video"), "image": (astronaut, "image, not a video"),
            "empty": (empty, "empty"), "truncated": (truncated, "corrupt/truncated"),
            "nothing": (None, "No clip yet"), "missing": (tmp_path / "gone.mp4", "no such file")}


def test_every_bad_input_is_a_message_and_the_next_request_works(
        app_models, detector, face_clip, astronaut, tmp_path):
    strict = Limits(max_duration_s=0.5, max_frames=64)
    analyzer = Analyzer(app_models, detector=detector, results_dir=tmp_path / "results",
                        limits=AppLimits(analysis=strict))
    cases = [(path, 4, 0.55, expected)
             for path, expected in bad_uploads(tmp_path, face_clip, astronaut).values()]
    cases += [(face_clip, 4, 0.55, "limit is 0.5 s"),
              (face_clip, 0, 0.55, "from 1 to 64"), (face_clip, 65, 0.55, "from 1 to 64"),
              (face_clip, 2.5, 0.55, "whole number"), (face_clip, "many", 0.55, "whole number"),
              (face_clip, 4, 1.5, "between 0 and 1"), (face_clip, 4, math.nan, "between 0 and 1")]
    for path, frames, threshold, expected in cases:
        with pytest.raises(gr.Error, match=expected) as info:
            analyzer.analyze(None if path is None else str(path), frames, threshold)
        assert "\n" not in info.value.message and len(info.value.message) < 300
        assert info.value.print_exception is False  # a message, not a server-side traceback
    short = Analyzer(app_models, detector=detector, results_dir=tmp_path / "results")
    assert len(short.analyze(str(face_clip), 4, 0.55).result.frames) == 4


# --- models loaded at start-up ------------------------------------------------------------

@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """As on a fresh clone before training: no bundled weights, no environment variables."""
    for role in ROLES:
        monkeypatch.setitem(ROLES, role, replace(ROLES[role], default=tmp_path / "weights" / role))
        monkeypatch.delenv(ROLES[role].env, raising=False)
    monkeypatch.delenv("DEEPFAKE_KD_UNTRAINED", raising=False)


def test_missing_weights_give_a_banner_and_a_clear_error(no_weights, detector, face_clip):
    loaded = load_app_models()
    assert not loaded.ready and loaded.models == {} and set(loaded.problems) == set(ROLES)
    banner = banner_markdown(loaded)
    for role in ROLES:
        assert f"- **{role}**: `" in banner and "does not exist yet" in loaded.problems[role]
    for hint in ("DEEPFAKE_KD_TEACHER", "DEEPFAKE_KD_STUDENT", "DEEPFAKE_KD_UNTRAINED=1",
                 "owner/name[@revision]"):
        assert hint in banner
    analyzer = Analyzer(loaded, detector=detector)
    assert "WEIGHTS MISSING" in analyzer.idle_panel("teacher")
    with pytest.raises(gr.Error, match="teacher and student weights are missing.*"
                                       "DEEPFAKE_KD_TEACHER / DEEPFAKE_KD_STUDENT"):
        analyzer.analyze(str(face_clip), 4, 0.55)


def test_untrained_flag_stands_in_random_weights_loudly(no_weights, monkeypatch, model_dirs,
                                                        report):
    monkeypatch.setenv("DEEPFAKE_KD_UNTRAINED", "1")
    monkeypatch.setenv("DEEPFAKE_KD_STUDENT", str(model_dirs["student"]))
    loaded = load_app_models()
    assert loaded.ready and loaded.untrained == ["teacher"]
    assert isinstance(loaded.models["teacher"].unwrap(), CrossEfficientViT)
    assert loaded.sources == {"teacher": UNTRAINED, "student": str(model_dirs["student"])}
    assert "RANDOM WEIGHTS" in banner_markdown(loaded)
    panel = Analyzer(loaded, detector=object()).idle_panel("teacher")
    assert "RANDOM WEIGHTS" in panel and "94,624,976" in panel
    verdict = report.result.models["teacher"].verdict
    analysed = panel_markdown("teacher", loaded, report.result)  # a verdict, greyed and labelled
    assert f'verdict-none">{verdict} (random weights)<' in analysed


def test_references_come_from_the_environment(no_weights, monkeypatch, model_dirs):
    for role in ROLES:
        monkeypatch.setenv(ROLES[role].env, str(model_dirs[role]))
    loaded = load_app_models()
    assert loaded.ready and loaded.problems == {} and banner_markdown(loaded) == ""
    assert isinstance(loaded.models["student"].unwrap(), StudentCNN)
    assert loaded.sources == {role: str(model_dirs[role]) for role in ROLES}
    monkeypatch.setenv("DEEPFAKE_KD_STUDENT", "nobody/no-such-model-anywhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub path, answered from the (empty) cache
    loaded = load_app_models()
    assert not loaded.ready
    assert "`DEEPFAKE_KD_STUDENT=nobody/no-such-model-anywhere`" in loaded.problems["student"]
    assert "Hub cache" in loaded.problems["student"]
    broken = model_dirs["teacher"].parent / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"architecture": "StudentCNN"}')
    (broken / "model.safetensors").write_bytes(b"half-written")
    monkeypatch.setenv("DEEPFAKE_KD_STUDENT", str(broken))
    loaded = load_app_models()  # a banner, not a crash at start-up
    assert not loaded.ready and str(broken) in loaded.problems["student"]


def test_models_run_behind_the_runtime_the_environment_names(no_weights, monkeypatch, model_dirs,
                                                              tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("DEEPFAKE_KD_CACHE", str(tmp_path / "cache"))
    for role in ROLES:
        monkeypatch.setenv(ROLES[role].env, str(model_dirs[role]))
    monkeypatch.setenv("DEEPFAKE_KD_RUNTIME", "onnx")
    loaded = load_app_models()
    assert loaded.ready and loaded.fallbacks == {} and banner_markdown(loaded) == ""
    assert {model.runtime for model in loaded.models.values()} == {"onnx"}
    assert isinstance(loaded.models["student"].unwrap(), StudentCNN)  # Grad-CAM runs on it
    assert "**Runs on:** ONNX Runtime" in panel_markdown("teacher", loaded, None)
    monkeypatch.setenv("DEEPFAKE_KD_RUNTIME", "tensorrt")
    with pytest.raises(DeepfakeKDError, match="DEEPFAKE_KD_RUNTIME=tensorrt: choose one of"):
        load_app_models()


def test_the_app_holds_the_weights_once_by_default(no_weights, monkeypatch, model_dirs, tmp_path):
    """No DEEPFAKE_KD_RUNTIME: the app runs ONNX Runtime on PyTorch's own tensors (memory
    first, for a process that holds its models for hours), and says so on each panel."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("DEEPFAKE_KD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEEPFAKE_KD_RUNTIME", raising=False)
    for role in ROLES:
        monkeypatch.setenv(ROLES[role].env, str(model_dirs[role]))
    loaded = load_app_models()
    assert loaded.ready and loaded.fallbacks == {}
    assert {model.runtime for model in loaded.models.values()} == {"onnx-shared"}
    assert "**Runs on:** ONNX Runtime, weights shared with PyTorch" in \
        panel_markdown("student", loaded, None)


def test_a_runtime_that_cannot_be_built_falls_back_to_eager(no_weights, monkeypatch, model_dirs):
    def broken(model, runtime):
        raise DeepfakeKDError("the onnx runtime needs ONNX Runtime: pip install onnxruntime onnx")

    monkeypatch.setattr("deepfake_kd.serving.loading.accelerate", broken)
    for role in ROLES:
        monkeypatch.setenv(ROLES[role].env, str(model_dirs[role]))
    loaded = load_app_models(runtime="onnx")  # served, only slower, and the banner says why
    assert loaded.ready and {model.runtime for model in loaded.models.values()} == {"eager"}
    assert set(loaded.fallbacks) == set(ROLES)
    assert "- **teacher** runs eager PyTorch, not onnx: the onnx runtime needs ONNX Runtime: " \
           "pip install onnxruntime onnx" in banner_markdown(loaded)
    assert "**Runs on:** PyTorch" in panel_markdown("student", loaded, None)


# --- served: gradio_client, then a real browser -------------------------------------------

@pytest.fixture(scope="module")
def demo(app_models, detector, examples):
    demo = app.build_demo(app_models, detector=detector, examples=examples)
    app.launch(demo, prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server(demo) -> str:
    return demo.local_url


def test_served_with_the_limits(demo):
    limits = AppLimits()
    assert demo.max_file_size == limits.analysis.max_file_bytes  # refused while uploading
    assert demo._queue.max_size == limits.max_queue
    analyze = next(fn for fn in demo.fns.values() if fn.api_name == "analyze")
    assert analyze.concurrency_limit == limits.concurrency
    by_id = {fn._id: fn for fn in demo.fns.values()}
    for name in ("explain", "explain_frame"):  # queued with the analyses, one model run at once
        explain = next(fn for fn in demo.fns.values() if fn.api_name == name)
        assert explain.concurrency_id == analyze.concurrency_id
        assert explain.concurrency_limit == limits.concurrency
        pending = by_id[explain.trigger_after]  # says "computing" at once, outside the queue
        assert explain.trigger_only_on_success and pending.queue is False
    explain = next(fn for fn in demo.fns.values() if fn.api_name == "explain")
    assert by_id[by_id[explain.trigger_after].trigger_after] is analyze  # after the verdicts
    assert demo.local_url.startswith("http://127.0.0.1:")


def test_served_app_answers_gradio_client_and_survives_a_bad_upload(server, face_clip,
                                                                   tmp_path):
    client = Client(server, verbose=False, download_files=str(tmp_path))
    outputs = client.predict(handle_file(str(face_clip)), 6, 0.55, api_name="/analyze")
    summary, teacher, student, probability, cost, gallery, json_file = outputs
    figure = json.loads(probability["plot"])
    models = [trace for trace in figure["data"] if trace["name"] in ROLES]
    assert [trace["name"] for trace in models] == list(ROLES)
    for trace in models:
        assert len(trace["x"]) == len(trace["y"]) == 6  # one point per sampled frame
    assert {trace["name"] for trace in json.loads(cost["plot"])["data"]} == {
        "parameters", "ms per face"}
    data = json.loads(Path(json_file).read_text())
    assert len(data["frames"]) == 6 and set(data["models"]) == set(ROLES)
    assert len(gallery) == len(data["faces"]) == 4
    for role, panel in zip(ROLES, (teacher, student)):
        assert f"{data['models'][role]['video_prob']:.3f}" in panel
        assert data["models"][role]["verdict"] in (FAKE, REAL)
    assert "6 frames sampled" in summary

    not_video = tmp_path / "notes.txt"
    not_video.write_text("this is not a video\n")
    with pytest.raises(AppError, match="notes.txt: not a readable video"):
        client.predict(handle_file(str(not_video)), 6, 0.55, api_name="/analyze")
    again = client.predict(handle_file(str(face_clip)), 4, 0.55, api_name="/analyze")
    assert len(json.loads(Path(again[-1]).read_text())["frames"]) == 4


def test_served_endpoint_yields_the_student_before_the_teacher(server, face_clip, tmp_path):
    client = Client(server, verbose=False, download_files=str(tmp_path))
    job = client.submit(handle_file(str(face_clip)), 6, 0.55, api_name="/analyze")
    final = job.result(timeout=240)
    updates = job.outputs()
    assert len(updates) == 2 and tuple(updates[-1]) == tuple(final)
    summary, teacher, student, probability, _, _, json_file = updates[0]
    assert "SCORING…" in teacher and "still scoring" in summary and json_file is None
    assert "Fake probability (clip):** **" in student
    figure = json.loads(probability["plot"])
    assert [trace["name"] for trace in figure["data"] if trace["name"] in ROLES] == ["student"]
    data = json.loads(Path(final[-1]).read_text())  # the API result: complete
    assert set(data["models"]) == set(ROLES)
    assert f"{data['models']['student']['video_prob']:.3f}" in student


def test_served_heatmaps_follow_the_analysis(server, face_clip):
    client = Client(server, verbose=False, download_files=False)  # file outputs as on the page
    *_, result_file = client.predict(handle_file(str(face_clip)), 12, 0.55, api_name="/analyze")
    status, pictures = client.predict(result_file, api_name="/explain")  # the clip behind it
    assert len(pictures) == 4 * 3 and "highest fake probability" in status
    for crop, teacher, student in zip(pictures[::3], pictures[1::3], pictures[2::3]):
        assert " · agreement " in crop["caption"]
        assert teacher["caption"].startswith("teacher ")
        assert student["caption"].startswith("student ")
    status, pictures = client.predict(result_file, 0.5, api_name="/explain_frame")
    assert len(pictures) == 3 and "the frame at 0.50 s" in status
    with pytest.raises(AppError, match="between 0 and 1.20 s"):
        client.predict(result_file, 7.0, api_name="/explain_frame")


def test_in_a_real_browser(server, examples, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    screenshot = Path(os.environ.get("DEEPFAKE_KD_SCREENSHOT") or tmp_path / "app.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            page.locator("#clip input[type=file]").set_input_files(str(examples[0]))
            page.locator("#clip video").wait_for(timeout=20_000)  # the upload arrived
            page.locator("#analyze").click()
            chart = page.locator("#probability-chart .js-plotly-plot")
            chart.wait_for(timeout=45_000)
            page.locator("#crops img").first.wait_for(timeout=10_000)
            page.locator("#explanations img").first.wait_for(timeout=30_000)  # after the verdicts
            page.locator("#explanations").scroll_into_view_if_needed()  # its images load lazily
            page.wait_for_function("() => [...document.querySelectorAll('#explanations img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            page.screenshot(path=str(screenshot), full_page=True)
            assert "on the 4 faces with the highest" in page.locator("#explain-status").inner_text()
            page.locator("#explain-time input").fill("1")
            page.locator("#explain-frame").click()
            page.get_by_text("Where the models look on the frame at").wait_for(timeout=30_000)
            assert chart.is_visible()
            assert page.locator("#cost-chart .js-plotly-plot").is_visible()
            for role in ROLES:
                panel = page.locator(f"#panel-{role}")
                assert panel.is_visible()
                text = panel.inner_text()
                assert role.capitalize() in text and "Fake probability (clip):" in text
                assert "ms per face" in text
            assert page.locator("#crops img").count() > 0
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000


def test_readme_states_the_app_limits():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    limits = AppLimits()
    stated = [f"| upload size | {limits.analysis.max_file_mb:g} MB",
              f"| clip length | {limits.analysis.max_duration_s / 60:g} minutes",
              f"| frames sampled | 1 to {limits.analysis.max_frames} "
              f"(default {limits.default_frames})",
              f"| analyses at once (queue concurrency) | {limits.concurrency} |",
              f"| requests waiting in the queue | {limits.max_queue} |",
              f"| face crops in the gallery | {limits.max_gallery} ",
              f"| uploads and results kept | {limits.cache_ttl_s / 3600:g} hour"]
    for line in stated:
        assert line in readme
    front_matter = readme.split("---")[1]
    for key in ("sdk: gradio", "sdk_version: 6.", "app_file: app.py",
                'python_version: "3.11"'):
        assert key in front_matter
