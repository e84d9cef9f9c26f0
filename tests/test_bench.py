"""`python -m deepfake_kd bench` with tiny settings: every figure in the JSON; no speed asserted."""

from __future__ import annotations

import argparse
import json

import pytest

from deepfake_kd.cli import main
from deepfake_kd.pipeline.video import sample_frames
from deepfake_kd.tools.bench import batch_sizes_arg, make_bench_clip


def test_bench_writes_every_figure(face_clip, model_dirs, tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    code = main(["bench", "--teacher", str(model_dirs["teacher"]),
                 "--student", str(model_dirs["student"]), "--repeats", "2", "--warmup", "1",
                 "--batch-sizes", "1,2", "--clip", str(face_clip), "--frames", "12",
                 "--clip-repeats", "1", "--threads", "1", "--runtime", "student=jit",
                 "--explain-repeats", "2",
                 "--json", str(out), "--markdown", str(tmp_path / "bench.md")])
    assert code == 0
    text = capsys.readouterr().out
    assert "student vs teacher" in text and "batch 2" in text and "frames/s" in text
    assert "student [jit]" in text
    report = json.loads(out.read_text())
    markdown = (tmp_path / "bench.md").read_text()
    assert "| parameters |" in markdown and "student vs teacher" in markdown
    assert "| s for the heatmaps of 8 faces (median) |" in markdown
    assert "heatmaps (Grad-CAM) of 8 faces, one call: teacher " in text

    assert report["machine"]["torch_threads"] == 1 and report["machine"]["cpu_count"] >= 1
    assert report["settings"]["batch_sizes"] == [1, 2] and report["settings"]["repeats"] == 2
    assert list(report["models"]) == ["teacher", "student"]  # the order given: teacher first
    for info in report["models"].values():
        assert info["parameters"] > 0 and info["flops_per_face"] > 0
    assert report["models"]["teacher"]["source"] == str(model_dirs["teacher"])
    assert report["models"]["teacher"]["runtime"] == "onnx"  # the default
    assert report["models"]["student"]["source"] == f"{model_dirs['student']} [jit]"
    assert report["models"]["student"]["runtime"] == "jit"
    assert report["models"]["student"]["architecture"] == "StudentCNN"
    for batch in ("1", "2"):
        for lat in report["latency"][batch].values():
            assert lat["repeats"] == 2
            assert 0 < lat["min_ms"] <= lat["median_ms"] and lat["p10_ms"] <= lat["p90_ms"]
            assert lat["per_face_ms"] == pytest.approx(lat["median_ms"] / int(batch))
            assert lat["gflops_per_s"] > 0

    explanation = report["explanation"]
    assert explanation["faces"] == 8 and report["settings"]["explain_repeats"] == 2
    for name in ("teacher", "student"):  # the jit student's heatmaps come from its eager model
        assert explanation[name]["repeats"] == 2 and explanation[name]["median_ms"] > 0

    comp = report["comparison"]
    assert comp["baseline"] == "teacher" and set(comp) == {"baseline", "student"}
    student = comp["student"]
    teacher_params = report["models"]["teacher"]["parameters"]
    assert student["parameters_reduction_pct"] == pytest.approx(
        100 * (1 - report["models"]["student"]["parameters"] / teacher_params))
    assert student["flops_reduction_pct"] < 100
    for batch in ("1", "2"):
        lat = student["latency"][batch]
        assert lat["ratio"] > 0 and lat["reduction_pct"] == pytest.approx(100 * (1 - lat["ratio"]))
        assert lat["paired_ratio_p10"] <= lat["paired_ratio_median"] <= lat["paired_ratio_p90"]

    clip = report["clip"]
    assert clip["path"] == str(face_clip) and (clip["width"], clip["height"]) == (480, 360)
    assert clip["frames"] == 12 and clip["faces"] == 8 and clip["repeats"] == 1
    assert set(clip["stages_s"]) == {"decoding", "detection", "model:teacher", "model:student",
                                     "other"}
    assert clip["total_s"] > 0 and clip["frames_per_s"] == pytest.approx(12 / clip["total_s"])
    assert clip["total_s"] == pytest.approx(sum(clip["stages_s"].values()) - clip["overlap_s"])
    assert report["peak_rss_mb"] > 0 and clip["rss_before_mb"] > 0
    answers = clip["answers_s"]
    assert list(answers) == ["student", "teacher"]  # the smaller model answers first
    assert 0 < answers["student"] <= answers["teacher"] <= clip["total_s"]
    assert "answers: student at" in text
    work = clip["work"]
    assert work["frames_decoded"] >= 12 and work["frames_searched"] + work["frames_followed"] == 12


def test_candidates_are_timed_per_face_beside_the_served_models(model_dirs, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--teacher", str(model_dirs["teacher"]),
                 "--student", str(model_dirs["student"]), "--candidate",
                 f"small={model_dirs['student']}", "--repeats", "2", "--warmup", "1",
                 "--batch-sizes", "1", "--clip-repeats", "0", "--explain-repeats", "0",
                 "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [name for name, info in report["models"].items() if info["candidate"]] == ["small"]
    assert set(report["latency"]["1"]) == {"teacher", "student", "small"}
    assert set(report["comparison"]) == {"baseline", "student", "small"}
    assert main(["bench", "--teacher", str(model_dirs["teacher"]), "--student",
                 str(model_dirs["student"]), "--candidate", "student=x", "--clip-repeats",
                 "0"]) == 2
    assert "--candidate student=x: give NAME=REF" in capsys.readouterr().err


def test_made_clip_has_a_moving_face(tmp_path, detector):
    path = make_bench_clip(tmp_path / "clip.mp4", size=(960, 540), seconds=1, fps=4)
    video = sample_frames(path, num_frames=4)
    assert (video.width, video.height, video.frame_count) == (960, 540, 4)
    faces = detector.detect(video.frames)
    assert all(len(frame_faces) == 1 for frame_faces in faces)
    xs = [frame_faces[0].box[0] for frame_faces in faces]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 200  # left to right
    assert not list(tmp_path.glob("*.part*"))  # written under a temporary name, then renamed


@pytest.mark.parametrize("text", ["", "0", "1,x", "-1"])
def test_bad_batch_sizes_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        batch_sizes_arg(text)
    assert batch_sizes_arg("1, 32") == [1, 32]
