"""Reliability and security: the served app under a small load with bad and hostile files, start-up
with broken weights, clips that break half-way, and limits enforced by the server itself.

The full load test is `python -m deepfake_kd loadtest` (README "Reliability"); here it runs
reduced: the tiny models of conftest, a few requests, the queue overflow, no large clip."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import app
from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.limits import MB, AppLimits
from deepfake_kd.models import StudentCNN, save_model
from deepfake_kd.roles import ROLES
from deepfake_kd.serving.handler import Analyzer, safe_stem
from deepfake_kd.serving.loading import AppModels, load_app_models
from deepfake_kd.serving.texts import banner_markdown
from deepfake_kd.tools import loadtest

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

PACKAGE = Path(loadtest.__file__).parents[2]
SERVER = PACKAGE / "tools" / "loadtest" / "server.py"  # the one module that starts a process
HOSTILE = ["$(touch pwned).mp4", "; rm -rf x.mp4", "`touch pwned`.mp4",
           "ünïcødé 顔 🎭 'q\".mp4", "-rf.mp4", "..mp4", "a" * 200 + ".mp4"]


# --- the served app under load ------------------------------------------------------------

def test_reduced_load_test(model_dirs, tmp_path):
    """`loadtest` with the tiny models: 8 requests from 2 clients (a clip, a non-video, hostile
    names as raw HTTP and through gradio_client, an over-size upload, a path not uploaded, a
    link, a clip that breaks half-way), then more requests at once than a queue of 2 holds.
    Run with SIGINT ignored, as a shell's background job (CI) inherits it: the servers inherit
    it too, and must still stop on SIGINT and clean up (`app.stop_on_sigint`)."""
    config = loadtest.Config(
        requests=8, concurrency=2, frames=6, teacher=str(model_dirs["teacher"]),
        student=str(model_dirs["student"]), upload_limit_mb=2, cache_ttl_s=120,
        wait_for_ttl=False, overflow_queue=2, overflow_requests=5, timeout_s=90,
        start_timeout_s=120, large=False)
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        report = loadtest.run(config, work=tmp_path / "load", log=lambda text: None)
    finally:
        signal.signal(signal.SIGINT, handler)
    text = loadtest.format_report(report)
    assert report["passed"], text
    assert report["server_exit"] is not None and report["server_exit"] >= 0, text  # not killed
    assert report["requests"] == 8 and report["failures"] == []
    assert report["results"] == 4 and report["clear_errors"] == 4  # landscape, 2 names, damaged
    assert report["rss_peak_mb"] <= report["rss_bound_mb"]
    assert report["files_left"] == [] and report["hostile_files_created"] == []
    assert report["path_outside_refused"] and report["server_tracebacks"] == 0
    overflow = report["overflow"]
    assert overflow["queue_full"] >= 1 and overflow["other_failures"] == []
    assert overflow["served"] + overflow["queue_full"] == 5 and overflow["answers_afterwards"]
    assert "Queue is full" in overflow["message"]
    for line in ("unexpected failures: 0", "p50", "p95", "server RSS", "files left",
                 "queue overflow", "PASSED"):
        assert line in text


def test_plan_covers_every_kind_of_request():
    kinds = [case.kind for case in loadtest.plan(20, large=True)]
    assert set(kinds) == set(loadtest.CASES) and len(kinds) == 20
    assert "large" not in {case.kind for case in loadtest.plan(20, large=False)}
    bad = {kind for kind, case in loadtest.CASES.items() if case.expect}
    assert bad == {"not-video", "over-size", "corrupt", "too-long", "image", "path-outside",
                   "link"}


def test_scores_are_compared_to_float_tolerance():
    frames = [(0, 1), (3, 0)]
    a = [frames, [(0, 1, ("student", 0.25), ("teacher", 0.5))]]
    close = [frames, [(0, 1, ("student", 0.25 + 1e-6), ("teacher", 0.5))]]
    far = [frames, [(0, 1, ("student", 0.26), ("teacher", 0.5))]]
    other_frames = [[(0, 1), (4, 0)], a[1]]
    assert not loadtest.score_difference(a, close)
    assert loadtest.score_difference(a, far) and loadtest.score_difference(a, other_frames)


# --- faults at start-up: named file, the fix, and no half-loaded model ----------------------

@pytest.fixture
def env_weights(monkeypatch, tmp_path, model_dirs):
    """The teacher from its good folder; the student from a folder each test breaks."""
    for role in ROLES:
        monkeypatch.setitem(ROLES, role, replace(ROLES[role], default=tmp_path / "absent" / role))
    monkeypatch.delenv("DEEPFAKE_KD_UNTRAINED", raising=False)
    monkeypatch.setenv(ROLES["teacher"].env, str(model_dirs["teacher"]))
    student = tmp_path / "student"
    monkeypatch.setenv(ROLES["student"].env, str(student))
    return student


def sharded_student(folder: Path, monkeypatch) -> list[Path]:
    monkeypatch.setattr("deepfake_kd.models.weights.MAX_SHARD_BYTES", 20_000)
    save_model(StudentCNN(widths=(8, 16, 32)), folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    return shards


def missing_shard(folder, monkeypatch):
    shards = sharded_student(folder, monkeypatch)
    shards[0].unlink()
    return [shards[0].name, "missing", "download the weights folder again"]


def corrupt_file(folder, monkeypatch):
    shards = sharded_student(folder, monkeypatch)
    shards[1].write_bytes(b"\x00not safetensors")
    return [shards[1].name, "not a readable safetensors file", "download the weights folder again"]


def mismatched_config(folder, monkeypatch):
    save_model(StudentCNN(widths=(4, 8)), folder)
    config = json.loads((folder / "config.json").read_text())
    config["widths"] = [4, 8, 16]  # the weights have two stages, the config says three
    (folder / "config.json").write_text(json.dumps(config))
    return [str(folder), "do not match StudentCNN", "Use the config.json saved with these weights"]


def unreachable_hub(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(folder.parent / "empty-hub-cache"))
    monkeypatch.setenv(ROLES["student"].env, "nobody/no-such-student@v1")
    return ["nobody/no-such-student", "Hub cache", "huggingface-cli download owner/name"]


@pytest.mark.parametrize("fault", [missing_shard, corrupt_file, mismatched_config,
                                   unreachable_hub])
def test_broken_weights_stop_the_model_at_start_up_with_the_file_and_the_fix(
        fault, env_weights, monkeypatch, detector, face_clip):
    expected = fault(env_weights, monkeypatch)
    loaded = load_app_models()
    assert "teacher" in loaded.models and "student" not in loaded.models  # none half-loaded
    assert not loaded.ready and list(loaded.problems) == ["student"]
    banner = banner_markdown(loaded)
    for text in expected + ["DEEPFAKE_KD_STUDENT"]:
        assert text in loaded.problems["student"] and text in banner
    assert "**To fix it**" in banner
    with pytest.raises(gr.Error, match="student weights are missing"):
        Analyzer(loaded, detector=detector).analyze(str(face_clip), 4, 0.55)
    demo = app.build_demo(loaded, detector=detector, examples=[])  # the page still builds
    shown = [block.value for block in demo.blocks.values()
             if getattr(block, "elem_id", None) == "banner"]
    assert shown and expected[0] in shown[0]
    monkeypatch.setenv("DEEPFAKE_KD_UNTRAINED", "1")  # a stand-in is labelled, not hidden
    loaded = load_app_models()
    assert loaded.ready and loaded.untrained == ["student"]
    assert "RANDOM WEIGHTS" in banner_markdown(loaded)


class Planted:
    """A pickle that would create `marker` if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_a_planted_pickle_is_refused_and_never_unpickled(name, env_weights, tmp_path):
    save_model(StudentCNN(widths=(4, 8)), env_weights)
    marker = tmp_path / "unpickled"
    (env_weights / name).write_bytes(pickle.dumps(Planted(marker)))
    loaded = load_app_models()
    assert "student" not in loaded.models
    problem = loaded.problems["student"]
    assert f"refusing pickle weight file(s) {name}" in problem
    assert "only safetensors are loaded" in problem and "Remove them" in problem
    assert not marker.exists()


def test_the_app_loads_weights_with_safetensors_only():
    """No module the app runs can unpickle: no torch.load, pickle or allow_pickle there."""
    app_modules = [PACKAGE.parent / "app.py", *(PACKAGE / "models").glob("*.py")] + [
        *(PACKAGE / "pipeline").glob("*.py"), *(PACKAGE / "serving").glob("*.py"),
        PACKAGE / "limits.py", PACKAGE / "roles.py", PACKAGE / "util.py"]
    for path in app_modules:
        source = path.read_text()
        for call in ("torch.load", "pickle.load", "allow_pickle=True", "import pickle"):
            assert call not in source, f"{path.name}: {call}"


# --- a clip that breaks half-way ----------------------------------------------------------

def test_frames_lost_half_way_are_named_on_the_page(tiny_models, detector, make_clip, landscape,
                                                   tmp_path):
    whole = make_clip(tmp_path / "whole.avi", landscape, fps=10, fourcc="MJPG")
    broken = tmp_path / "broken.avi"
    broken.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.6)])
    analyzer = Analyzer(AppModels(models=tiny_models, sources={r: "in memory" for r in ROLES}),
                        detector=detector, results_dir=tmp_path / "results")
    report = analyzer.analyze(str(broken), 12, 0.55)
    result = report.result
    lost = result.failed_frames
    assert lost and result.frames and max(f.index for f in result.frames) < min(lost)
    assert len(result.frames) + len(lost) == 12
    assert f"{len(lost)} of the 12 sampled frames could not be decoded" in report.summary
    for index in lost:
        assert f"{index / result.fps:.2f} s" in report.summary
    assert result.faces and all(face.frame_index not in lost for face in result.faces)
    assert '"failed_frames"' in report.json_path.read_text()


# --- limits enforced by the server, whatever the browser does -------------------------------

@pytest.fixture
def app_analyzer(tiny_models, detector, tmp_path) -> Analyzer:
    """The handler as the app builds it: the app's own limits."""
    return Analyzer(AppModels(models=tiny_models, sources={r: "in memory" for r in ROLES}),
                    detector=detector, limits=AppLimits(), results_dir=tmp_path / "results")


def test_upload_size_is_enforced_by_the_handler(app_analyzer, tmp_path):
    limit = AppLimits().analysis.max_file_bytes
    big = tmp_path / "big.mp4"
    with open(big, "wb") as handle:  # sparse: no 100 MB written, the size is what counts
        handle.truncate(limit + 1)
    with pytest.raises(gr.Error, match="big.mp4: the file is 100 MB; the limit is 100 MB"):
        list(app_analyzer.handle(str(big), 4, 0.55))  # a generator: run it


def test_clip_duration_is_enforced_by_the_handler(app_analyzer, make_clip, tmp_path):
    seconds = int(AppLimits().analysis.max_duration_s) + 2
    frames = [np.full((48, 64, 3), 90, np.uint8)] * seconds
    long_clip = make_clip(tmp_path / "long.mp4", frames, fps=1)
    with pytest.raises(gr.Error, match=f"long.mp4: the clip is {seconds}.0 s long; the limit "
                                       "is 120 s"):
        list(app_analyzer.handle(str(long_clip), 4, 0.55))


def test_served_limits_come_from_app_limits_and_the_environment(tiny_models):
    limits = AppLimits.from_env({"DEEPFAKE_KD_MAX_UPLOAD_MB": "2.5", "DEEPFAKE_KD_MAX_QUEUE": "3",
                                 "DEEPFAKE_KD_MAX_DURATION_S": "30",
                                 "DEEPFAKE_KD_CACHE_TTL_S": "60"})
    assert limits.analysis.max_file_bytes == int(2.5 * MB) and limits.max_queue == 3
    assert limits.analysis.max_duration_s == 30 and limits.cache_ttl_s == 60
    assert limits.cache_sweep_s == 10 and AppLimits.from_env({}) == AppLimits()
    with pytest.raises(DeepfakeKDError, match="DEEPFAKE_KD_MAX_QUEUE='-1': expected a positive"):
        AppLimits.from_env({"DEEPFAKE_KD_MAX_QUEUE": "-1"})
    demo = app.build_demo(AppModels(models=tiny_models, sources={r: "in memory" for r in ROLES}),
                          detector=object(), limits=limits, examples=[])
    assert demo._queue.max_size == 3 and demo.delete_cache == (10, 60)


def test_an_expired_upload_is_named_without_the_server_folders(app_analyzer, tmp_path):
    gone = tmp_path / "cache" / "0123abcd" / "clip.mp4"
    with pytest.raises(gr.Error, match=r"clip.mp4: no such file on the server .* 60 minutes\); "
                                       "upload the clip again") as info:
        app_analyzer.analyze(str(gone), 4, 0.55)
    assert str(tmp_path) not in info.value.message


# --- hostile upload names -------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_upload_name_stays_a_name(name, app_analyzer, face_clip, tmp_path,
                                            monkeypatch):
    """The name reaches no shell and no path outside the results folder; the clip is analysed
    as any other (direct call: the served app gets the same names in test_reduced_load_test)."""
    upload = tmp_path / "upload" / name
    upload.parent.mkdir()
    shutil.copy(face_clip, upload)
    monkeypatch.chdir(tmp_path)  # where `touch pwned` would land
    before = sorted(p for p in tmp_path.rglob("*") if "results" not in p.parts)
    report = app_analyzer.analyze(str(upload), 4, 0.55)
    assert len(report.result.frames) == 4
    results = (tmp_path / "results").resolve()
    assert report.json_path.resolve().parent.parent == results
    assert report.json_path.name == f"{safe_stem(name)}-deepfake-kd.json"
    assert len(report.json_path.name.encode()) < 255 and not report.json_path.name.startswith(".")
    after = sorted(p for p in tmp_path.rglob("*") if "results" not in p.parts)
    assert after == before  # nothing created beside the upload
    assert not (Path.cwd() / "pwned").exists()


def test_no_shell_and_no_subprocess_in_the_package():
    """Nothing in deepfake_kd can hand an upload's name to a shell: no os.system/os.popen, no
    shell=True anywhere; subprocess only in loadtest, which starts `python app.py` from a
    fixed argument list (tools/loadtest/server.py)."""
    for path in sorted(PACKAGE.rglob("*.py")) + [PACKAGE.parent / "app.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                name = f"{node.value.id}.{node.attr}"
                assert name not in ("os.system", "os.popen", "os.execv", "os.spawnv",
                                    "os.startfile"), f"{path.name}:{node.lineno}: {name}"
            if isinstance(node, ast.keyword) and node.arg == "shell":
                raise AssertionError(f"{path.name}:{node.value.lineno}: shell= argument")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] + [getattr(node, "module", "")]
                if any(m and m.split(".")[0] in ("subprocess", "pty", "commands")
                       for m in modules):
                    assert path == SERVER, f"{path}:{node.lineno}"
    source = SERVER.read_text()
    assert source.count("subprocess.Popen(") == 1
    assert "subprocess.Popen([sys.executable, str(APP)]" in source


def test_readme_states_the_reliability_figures():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    for text in ("python -m deepfake_kd loadtest", "unexpected failures: 0", "p50", "p95",
                 "peak", "files left", "Queue is full", "currently busy"):
        assert text in section, text
