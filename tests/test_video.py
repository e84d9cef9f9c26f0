"""Frame sampling: even spread, orientation, downscaling, limits, and every kind of bad upload."""

from __future__ import annotations

import shutil
import wave

import numpy as np
import pytest

from deepfake_kd.errors import DeepfakeKDError, VideoError
from deepfake_kd.limits import Limits
from deepfake_kd.pipeline import video as video_module
from deepfake_kd.pipeline.video import count_frames, sample_frames, spread_indices


def test_samples_every_frame_of_a_short_clip(face_clip):
    video = sample_frames(face_clip, num_frames=12)
    assert video.indices == list(range(12))
    assert (video.width, video.height, video.frame_count) == (480, 360, 12)
    assert video.fps == pytest.approx(10)
    assert video.duration == pytest.approx(1.2)
    assert video.timestamps == pytest.approx([i / 10 for i in range(12)])
    assert video.failed == [] and video.scale == 1.0
    assert all(f.shape == (360, 480, 3) and f.dtype == np.uint8 for f in video.frames)


def test_frames_are_rgb_and_in_order(face_clip, landscape, face_frame_indices):
    video = sample_frames(face_clip, num_frames=12)
    for index in (0, face_frame_indices[0], face_frame_indices[-1]):  # mp4v is lossy
        diff = np.abs(video.frames[index].astype(int) - landscape[index].astype(int))
        assert diff.mean() < 12, index


def test_fewer_frames_are_spread_evenly(face_clip):
    video = sample_frames(face_clip, num_frames=4)
    assert video.indices == [1, 4, 7, 10]
    assert spread_indices(300, 32)[:3] == [4, 14, 23] and spread_indices(300, 32)[-1] == 295
    assert spread_indices(5, 32) == [0, 1, 2, 3, 4]


def test_seeking_reads_the_same_frames_as_grabbing(face_clip, monkeypatch):
    grabbed = sample_frames(face_clip, num_frames=4)
    monkeypatch.setattr(video_module, "SEEK_MIN_GAP", 0)  # seek before every sampled frame
    sought = sample_frames(face_clip, num_frames=4)
    assert sought.indices == grabbed.indices
    assert all(np.array_equal(a, b) for a, b in zip(sought.frames, grabbed.frames))


# (codec, container, pixel format, options): every common format a phone, camera, browser or
# editor writes; AV1 is what OpenCV's bundled FFmpeg could not decode.
FORMATS = {
    "AV1 MP4": ("libsvtav1", "mp4", "yuv420p", {"preset": "12"}),
    "H.264 MP4 with B-frames": ("libx264", "mp4", "yuv420p", {"bf": "3"}),
    "VP8 WebM": ("libvpx", "webm", "yuv420p", {"b": "4M", "crf": "4"}),
    "VP9 WebM": ("libvpx-vp9", "webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "HEVC 10-bit MP4": ("libx265", "mp4", "yuv420p10le", {"x265-params": "log-level=none"}),
    "MPEG-4 AVI": ("mpeg4", "avi", "yuv420p", {"qscale": "2"}),
    "ProRes MOV": ("prores_ks", "mov", "yuv422p10le", {}),
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_common_format_decodes_with_exact_timestamps(kind, tmp_path, make_av_clip,
                                                           landscape):
    import av

    codec, suffix, pix_fmt, options = FORMATS[kind]
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder to make the clip")
    path = make_av_clip(tmp_path / f"clip.{suffix}", landscape, fps=10, codec=codec,
                        pix_fmt=pix_fmt, options=options)
    video = sample_frames(path, num_frames=12)
    assert video.indices == list(range(12)) and video.failed == []
    assert video.timestamps == pytest.approx([i / 10 for i in range(12)], abs=1e-6)
    assert (video.width, video.height) == (480, 360)
    for index in (0, 2, 9):  # lossy: close to what was encoded
        diff = np.abs(video.frames[index].astype(int) - landscape[index].astype(int)).mean()
        assert diff < 12, (kind, index, diff)


def numbered_frames(count: int, size=(160, 96)) -> list[np.ndarray]:
    """Frames that say their own number: a white bar whose position is the frame index."""
    frames = []
    for k in range(count):
        frame = np.full((size[1], size[0], 3), 40, np.uint8)
        frame[:, 2 * k:2 * k + 2] = 255
        frames.append(frame)
    return frames


def shown_number(frame: np.ndarray) -> int:
    return int(np.argmax(frame[:, :, 0].mean(axis=0))) // 2


@pytest.mark.parametrize("bframes, decoded_max", [(3, 35), (16, 60)])
def test_non_reference_frames_are_skipped_and_samples_stay_spread(tmp_path, make_av_clip,
                                                                  bframes, decoded_max):
    """60 frames, 8 samples 7.5 frames apart: with x264's B-frames only reference frames are
    decoded, each sample the frame nearest its spot, timestamps and pixels the frame's own.
    With 16 B-frames in a row the reference frames lie too far apart, and every frame is
    decoded instead (the same spread)."""
    path = make_av_clip(tmp_path / "numbered.mp4", numbered_frames(60), fps=30, codec="libx264",
                        options={"x264-params": f"bframes={bframes}:b-adapt=0:b-pyramid=none:"
                                                "keyint=60:log-level=none", "crf": "10"})
    video = sample_frames(path, num_frames=8)
    spots = spread_indices(60, 8)
    assert len(video.indices) == 8 and video.failed == []
    assert all(abs(index - spot) <= 3 for index, spot in zip(video.indices, spots))
    assert video.indices == sorted(set(video.indices))
    assert [shown_number(frame) for frame in video.frames] == video.indices
    assert video.timestamps == pytest.approx([i / 30 for i in video.indices], abs=1e-6)
    assert video.decoded <= decoded_max


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_clip_stored_sideways_comes_out_upright(rotation, tmp_path, make_av_clip, portrait,
                                                  detector):
    """A phone stores a portrait clip as landscape frames with a rotation in its display
    matrix (-90 for the usual way of holding it); the frames must come out as shown."""
    upright = portrait
    stored = [np.ascontiguousarray(np.rot90(frame, -rotation // 90)) for frame in upright]
    path = make_av_clip(tmp_path / "phone.mp4", stored, fps=25, codec="libx264",
                        rotation=rotation, options={"crf": "12"})
    video = sample_frames(path, num_frames=4)
    assert (video.width, video.height) == (240, 320)  # portrait, as shown
    for frame, index in zip(video.frames, video.indices):
        assert np.abs(frame.astype(int) - upright[index].astype(int)).mean() < 8
    assert len(detector.detect(video.frames[:1])[0]) == 1  # an upright face is found


def test_counting_frames_stops_past_the_limit(face_clip):
    assert count_frames(face_clip, stop_after=100) == 12
    assert count_frames(face_clip, stop_after=5) == 5


def test_portrait_clip_keeps_its_orientation(portrait_clip):
    video = sample_frames(portrait_clip, num_frames=8)
    assert (video.width, video.height) == (240, 320)
    assert video.frames[0].shape == (320, 240, 3)
    assert video.fps == pytest.approx(25)


def test_large_frames_are_shrunk_on_read(face_clip):
    video = sample_frames(face_clip, num_frames=3, limits=Limits(keep_long_side=240))
    assert (video.width, video.height) == (480, 360)  # the original size is still reported
    assert video.scale == pytest.approx(0.5)
    assert all(f.shape == (180, 240, 3) for f in video.frames)


def test_frames_lost_half_way_are_reported(tmp_path, make_clip, landscape):
    avi = make_clip(tmp_path / "whole.avi", landscape, fps=10, fourcc="MJPG")
    data = avi.read_bytes()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[:int(len(data) * 0.6)])
    video = sample_frames(truncated, num_frames=12)
    assert video.indices and video.failed, "expected some frames kept and some lost"
    assert sorted(video.indices + video.failed) == list(range(12))
    assert max(video.indices) < min(video.failed)  # the tail is what is missing


def wav_file(path):
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(np.zeros(8000, dtype=np.int16).tobytes())
    return path


def bad_inputs(face_clip, tmp_path, astronaut):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(face_clip.read_bytes()[:int(face_clip.stat().st_size * 0.3)])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    text_txt = tmp_path / "notes.txt"  # FFmpeg would render it as frames of text
    text_txt.write_text("not a video\n" * 100)
    png = tmp_path / "photo.mp4"
    shutil.copy(astronaut, png)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    return {
        "text": (text, Limits(), "not a readable video"),
        "text .txt": (text_txt, Limits(), "not a readable video"),
        "png": (png, Limits(), "image, not a video"),
        "audio": (wav_file(tmp_path / "sound.wav"), Limits(), "not a readable video"),
        "truncated": (truncated, Limits(), "corrupt/truncated"),
        "empty": (empty, Limits(), "empty"),
        "missing": (tmp_path / "missing.mp4", Limits(), "no such file"),
        "directory": (tmp_path, Limits(), "not a file"),
        "too long": (face_clip, Limits(max_duration_s=0.5), "limit is 0.5 s"),
        "too many pixels": (face_clip, Limits(max_frame_pixels=320 * 240), "megapixels"),
        "too large": (face_clip, Limits(max_file_mb=0.001), "MB"),
    }


@pytest.mark.parametrize("kind", ["text", "text .txt", "png", "audio", "truncated", "empty", "missing",
                                  "directory", "too long", "too many pixels", "too large"])
def test_bad_input_is_one_clear_error_and_the_next_call_works(kind, face_clip, tmp_path,
                                                             astronaut):
    path, limits, expected = bad_inputs(face_clip, tmp_path, astronaut)[kind]
    with pytest.raises(VideoError, match=expected) as info:
        sample_frames(path, num_frames=4, limits=limits)
    message = str(info.value)
    assert "\n" not in message and len(message) < 250
    assert len(sample_frames(face_clip, num_frames=4).frames) == 4


@pytest.mark.parametrize("num_frames", [0, 129])
def test_frame_count_outside_limits_is_refused(face_clip, num_frames):
    with pytest.raises(DeepfakeKDError, match="between 1 and 128"):
        sample_frames(face_clip, num_frames=num_frames)
