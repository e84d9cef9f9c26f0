"""`python -m deepfake_kd analyze`: JSON and text output, the --explain files, and one-line errors
with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2

from deepfake_kd.cli import main
from deepfake_kd.roles import ROLES

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "deepfake_kd", "analyze", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_json_end_to_end(face_clip, model_dirs):
    done = run_module(str(face_clip), "--frames", "12", "--teacher", str(model_dirs["teacher"]),
                      "--student", str(model_dirs["student"]), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["width"] == 480 and result["no_face"] is False
    assert [frame["num_faces"] > 0 for frame in result["frames"]].count(True) == 8
    for role in ("teacher", "student"):
        scores = result["models"][role]
        assert scores["source"] == str(model_dirs[role])
        assert scores["verdict"] in {"FAKE", "REAL"} and 0 <= scores["video_prob"] <= 1
        assert scores["num_parameters"] > 0 and scores["ms_per_face"] > 0
        assert scores["tta"] == "flip"  # the default: each face and its mirror
    assert all(set(face["probs"]) == {"teacher", "student"} and "crop" not in face
               for face in result["faces"])


def test_text_summary(face_clip, model_dirs, capsys):
    code = main(["analyze", str(face_clip), "--frames", "12", "--threshold", "0.6",
                 "--teacher", str(model_dirs["teacher"]), "--student", str(model_dirs["student"])])
    out = capsys.readouterr().out
    assert code == 0
    assert "teacher" in out and "student" in out and "threshold 0.6" in out
    assert out.count(" no face") == 4  # the blank and noise frames


def test_untrained_warns_loudly(portrait_clip, model_dirs, capsys):
    code = main(["analyze", str(portrait_clip), "--frames", "2", "--untrained",
                 "--teacher", str(model_dirs["teacher"])])  # only the student is untrained
    captured = capsys.readouterr()
    assert code == 0
    assert "WARNING: student use RANDOM weights" in captured.err
    assert "meaningless" in captured.err and "teacher" not in captured.err


def test_missing_default_weights_say_what_to_do(face_clip, tmp_path, monkeypatch, capsys):
    for role in ("teacher", "student"):
        monkeypatch.setitem(ROLES, role, replace(ROLES[role], default=tmp_path / role))
        monkeypatch.delenv(ROLES[role].env, raising=False)
    assert main(["analyze", str(face_clip)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: teacher weights are missing")
    assert "--untrained" in err and "--teacher REF" in err


def test_missing_weights_exit_2_with_one_line(tmp_path, model_dirs):
    done = run_module(str(tmp_path / "clip.mp4"), "--teacher", str(tmp_path / "nowhere"),
                      "--student", str(model_dirs["student"]))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --teacher ")


def test_bad_video_exit_2_with_one_line(tmp_path, model_dirs, capsys):
    text = tmp_path / "clip.mp4"
    text.write_text("not a video")
    code = main(["analyze", str(text), "--teacher", str(model_dirs["teacher"]),
                 "--student", str(model_dirs["student"])])
    assert code == 2
    assert capsys.readouterr().err == ("error: clip.mp4: not a readable video (not a video "
                                       "file, audio only, or corrupt/truncated)\n")


def test_explain_writes_overlays_and_numbers(face_clip, model_dirs, tmp_path, capsys):
    out = tmp_path / "explained"
    code = main(["analyze", str(face_clip), "--frames", "12", "--teacher", str(model_dirs["teacher"]),
                 "--student", str(model_dirs["student"]), "--explain", str(out),
                 "--explain-faces", "3", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((out / "result.json").read_text()) == printed
    explanation = printed["explanation"]
    assert explanation["models"] == ["teacher", "student"] and len(explanation["faces"]) == 3
    worst = sorted((max(face["probs"].values()) for face in printed["faces"]), reverse=True)
    assert [max(face["probs"].values()) for face in explanation["faces"]] == worst[:3]
    for face in explanation["faces"]:
        assert set(face["files"]) == {"side_by_side", "teacher", "student"}
        side = cv2.imread(str(out / face["files"]["side_by_side"]))
        assert side.shape == (224, 3 * 224 + 2 * 4, 3)
        assert cv2.imread(str(out / face["files"]["student"])).shape == (224, 224, 3)
        assert face["agreement"] is None or -1 <= face["agreement"] <= 1
    assert len(list(out.glob("*.png"))) == 9

    main(["analyze", str(face_clip), "--frames", "12", "--teacher", str(model_dirs["teacher"]),
          "--student", str(model_dirs["student"]), "--explain", str(out)])
    text = capsys.readouterr().out
    assert f"where the models look (Grad-CAM), written to {out}" in text
    assert text.count("face0") == 4 and "mean agreement" in text
