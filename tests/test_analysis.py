"""The analysis: faces found once, every model scores the same crops, the reference verdict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deepfake_kd.errors import VideoError
from deepfake_kd.models import FaceClassifier
from deepfake_kd.pipeline.analysis import (
    FAKE,
    NO_FACE,
    REAL,
    analyze_video,
    model_result,
    summarize_tracks,
)
from deepfake_kd.pipeline.faces import Face


class ConstantModel(FaceClassifier):
    """Scores every crop `prob` and keeps the crops it was given, to check what models see."""

    def __init__(self, prob: float, input_size: int = 224):
        super().__init__(input_size=input_size, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.logit = math.log(prob / (1 - prob))
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[np.ndarray] = []

    def preprocess(self, crops):
        self.seen.append(np.array(crops))
        return super().preprocess(crops)

    def forward(self, x):
        self.check_input(x)
        return torch.full((len(x),), self.logit) + self.bias


@pytest.fixture(scope="module")
def result(face_clip, detector, tiny_models):
    return analyze_video(face_clip, tiny_models, num_frames=12, detector=detector,
                         sources={"teacher": "dir/teacher", "student": "dir/student"})


def test_every_face_scored_by_every_model(result, tiny_models, face_frame_indices):
    assert not result.no_face
    assert [f.index for f in result.frames if f.num_faces] == face_frame_indices
    assert [face.frame_index for face in result.faces] == face_frame_indices
    for face in result.faces:
        assert set(face.probs) == {"teacher", "student"}
        assert all(0.0 <= p <= 1.0 for p in face.probs.values())
        assert face.timestamp == pytest.approx(face.frame_index / 10)
        assert face.crop.shape == (224, 224, 3)
    assert [t.track_id for t in result.tracks] == [0] and result.tracks[0].num_faces == 8
    for name, model in tiny_models.items():
        scores = result.models[name]
        assert scores.num_parameters == model.num_parameters()
        assert scores.inference_ms > 0 and scores.ms_per_face > 0
        assert scores.ms_per_face == pytest.approx(scores.inference_ms / 8)
        assert scores.source == f"dir/{name}"
        mean = np.mean([face.probs[name] for face in result.faces])
        assert scores.track_probs == {0: pytest.approx(mean)}
        assert scores.video_prob == pytest.approx(mean)
        assert scores.verdict == (FAKE if mean > 0.55 else REAL)
    assert result.timings_ms["sampling"] > 0 and result.timings_ms["detection"] > 0
    assert (result.width, result.height, result.frame_count) == (480, 360, 12)


def test_result_is_json_without_pixels(result):
    data = json.loads(json.dumps(result.to_dict()))
    assert "crop" not in data["faces"][0]
    assert set(data["models"]) == {"teacher", "student"}
    assert data["models"]["student"]["track_probs"].keys() == {"0"}
    assert len(data["faces"][0]["box"]) == 4 and data["no_face"] is False


def test_models_share_the_same_crops_and_preprocess_their_own_way(face_clip, detector):
    models = {"big": ConstantModel(0.7, input_size=224), "small": ConstantModel(0.2, 112)}
    result = analyze_video(face_clip, models, num_frames=12, detector=detector, threshold=0.55)
    seen = {name: np.concatenate(model.seen[1:]) for name, model in models.items()}  # 0: warm-up
    assert seen["big"].shape == (8, 224, 224, 3)
    assert np.array_equal(seen["big"], seen["small"])
    assert np.array_equal(seen["big"], np.stack([face.crop for face in result.faces]))
    assert result.models["big"].verdict == FAKE and result.models["small"].verdict == REAL
    assert result.models["big"].video_prob == pytest.approx(0.7)
    assert result.models["big"].source == "in memory"


def test_verdict_rule_any_counted_track_over_threshold():
    def rule(probs, track_ids, counted, threshold=0.55):
        return model_result("m", ConstantModel(0.5), probs=probs, track_ids=track_ids,
                            counted=counted, seconds=0.01, threshold=threshold, source="x")

    probs, track_ids = [0.2, 0.4, 0.9, 0.7], [0, 0, 1, 1]
    fake = rule(probs, track_ids, counted={0, 1})
    assert fake.track_probs == {0: pytest.approx(0.3), 1: pytest.approx(0.8)}
    assert (fake.verdict, fake.video_prob) == (FAKE, pytest.approx(0.8))
    assert rule(probs, track_ids, counted={0, 1}, threshold=0.8).verdict == REAL  # not > 0.8
    ignored = rule(probs, track_ids, counted={0})  # track 1 too brief to count
    assert (ignored.verdict, ignored.video_prob) == (REAL, pytest.approx(0.3))
    assert rule([], [], counted=set()).verdict == NO_FACE


def test_brief_tracks_are_not_counted():
    face = lambda track: Face(  # noqa: E731
        box=(0, 0, 1, 1), prob=1.0, track_id=track, crop=None)
    faces = [(i, face(0)) for i in range(10)] + [(3, face(1)), (4, face(2)), (5, face(2))]
    tracks = summarize_tracks(faces, timestamps=[i / 10 for i in range(10)], min_share=0.2)
    assert [(t.track_id, t.num_faces, t.counted) for t in tracks] == [
        (0, 10, True), (1, 1, False), (2, 2, True)]
    assert tracks[0].first_timestamp == 0.0 and tracks[0].last_timestamp == pytest.approx(0.9)


def test_no_face_is_a_result_not_an_error(no_face_clip, detector, tiny_models):
    result = analyze_video(no_face_clip, tiny_models, num_frames=6, detector=detector)
    assert result.no_face and result.faces == [] and result.tracks == []
    assert all(frame.num_faces == 0 for frame in result.frames)
    for scores in result.models.values():
        assert (scores.verdict, scores.video_prob, scores.inference_ms) == (NO_FACE, None, 0.0)
    json.dumps(result.to_dict())


def test_progress_runs_from_zero_to_one(portrait_clip, detector):
    calls = []
    analyze_video(portrait_clip, {"m": ConstantModel(0.5)}, num_frames=8, detector=detector,
                  progress=lambda fraction, text: calls.append((fraction, text)))
    fractions = [fraction for fraction, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(isinstance(text, str) and text for _, text in calls)


def test_lost_frames_are_reported(tmp_path, detector, make_clip, landscape):
    data = make_clip(tmp_path / "whole.avi", landscape, fps=10, fourcc="MJPG").read_bytes()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[:int(len(data) * 0.6)])
    result = analyze_video(truncated, {"m": ConstantModel(0.5)}, num_frames=12,
                           detector=detector)
    assert result.failed_frames and len(result.frames) + len(result.failed_frames) == 12


def test_bad_video_then_good_video(tmp_path, face_clip, detector):
    text = tmp_path / "clip.mp4"
    text.write_text("hello")
    with pytest.raises(VideoError, match="not a readable video"):
        analyze_video(text, {"m": ConstantModel(0.5)}, detector=detector)
    result = analyze_video(face_clip, {"m": ConstantModel(0.5)}, num_frames=4, detector=detector)
    assert len(result.frames) == 4


def test_overlapped_decoding_gives_the_same_analysis(face_clip, tmp_path, detector, tiny_models):
    """analyze_video(overlap=True): faces detected while later frames decode, same result."""
    plain_run = analyze_video(face_clip, tiny_models, num_frames=12, detector=detector)
    calls = []
    overlapped = analyze_video(face_clip, tiny_models, num_frames=12, detector=detector,
                               overlap=True, progress=lambda f, text: calls.append(f))
    def timeless(result):
        data = result.to_dict()
        for model in data["models"].values():
            model["inference_ms"] = model["ms_per_face"] = None
        return data | {"timings_ms": None}

    assert timeless(overlapped) == timeless(plain_run)
    timings = overlapped.timings_ms
    assert timings["frames_and_faces"] <= timings["sampling"] + timings["detection"] + 1
    assert calls == sorted(calls) and calls[-1] == 1.0
    text = tmp_path / "clip.mp4"
    text.write_text("hello")
    with pytest.raises(VideoError, match="not a readable video"):  # raised by the decoder thread
        analyze_video(text, tiny_models, detector=detector, overlap=True)
