"""Frame sampling: N frames spread evenly over a clip, decoding only what reaching them needs.

Every way an upload can be unusable (missing, empty, an image, audio only, corrupt, too big or
too long) ends in a one-line VideoError, never a traceback. Frames that fail to decode part-way
are reported, and the ones that did decode are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..errors import DeepfakeKDError, VideoError
from ..limits import MB, Limits

# Seeking restarts decoding at the previous keyframe; grab() decodes every frame on the way.
# Measured on the 10 s 1080p DFDC clips (a keyframe only every 250+ frames, as with x264's
# default), sampling 32 of 300 frames took 10-12 s seeking before each frame and about 1 s
# grabbing forward. So grab across short gaps and seek only across gaps longer than a typical
# keyframe interval, where seeking decodes fewer frames than grabbing would.
SEEK_MIN_GAP = 250
MAX_FPS = 1000.0  # above this the container's frame rate is nonsense, not a fast camera
# FFmpeg's tty demuxer opens any .txt/.ans file as a "video" of rendered text (codec 'ansi').
TEXT_CODECS = {b"ansi"}


def quiet_ffmpeg() -> None:
    """Silence FFmpeg's and OpenCV's own log lines ("moov atom not found"): the errors here
    say what went wrong in one line, and those lines would only bury it (or scatter over a
    progress bar). FFmpeg reads the variable before its first use; a value already set wins."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@dataclass
class SampledVideo:
    """Sampled frames (uint8 RGB, resized to `scale` of the original) and what they came from."""

    path: str
    fps: float
    width: int  # of the decoded (display-oriented) stream, before any resizing
    height: int
    frame_count: int
    duration: float  # seconds
    scale: float  # kept frame size / original size (<= 1)
    frames: list[np.ndarray]  # of equal size, in the order of `indices`
    indices: list[int]
    timestamps: list[float]  # seconds, index / fps
    failed: list[int]  # sampled indices that did not decode


def sample_frames(path: str | Path, num_frames: int = 32, limits: Limits = Limits(), *,
                  on_frame: Callable[[np.ndarray], None] | None = None) -> SampledVideo:
    """Decode `num_frames` frames evenly spread over the clip (all frames of a shorter clip).
    `on_frame(frame)` sees each kept frame as soon as it is decoded (face detection can start
    on it while later frames decode)."""
    if not 1 <= num_frames <= limits.max_frames:
        raise DeepfakeKDError(f"number of frames must be between 1 and {limits.max_frames}, "
                              f"got {num_frames}")
    path = check_file(path, limits)
    capture = open_capture(path)
    frames, kept, failed = [], [], []
    original_size = kept_size = None  # (width, height), from the first decoded frame
    try:
        fps, frame_count = stream_info(capture, path, limits)
        for index, frame in read_frames(capture, spread_indices(frame_count, num_frames)):
            if frame is None:
                failed.append(index)
                continue
            if original_size is None:
                original_size = frame.shape[1], frame.shape[0]
                kept_size = fit_long_side(original_size, limits.keep_long_side)
            frames.append(to_rgb(frame, size=kept_size))  # shrink now: memory stays bounded
            kept.append(index)
            if on_frame is not None:
                on_frame(frames[-1])
    finally:
        capture.release()
    if not frames:
        raise VideoError(f"{path.name}: none of its frames could be decoded; the file is corrupt "
                         "or uses a codec this build cannot read. Re-encode it as H.264 MP4.")
    return SampledVideo(
        path=str(path), fps=fps, width=original_size[0], height=original_size[1],
        frame_count=frame_count, duration=frame_count / fps,
        scale=kept_size[0] / original_size[0], frames=frames, indices=kept,
        timestamps=[i / fps for i in kept], failed=failed)


def check_file(path: str | Path, limits: Limits) -> Path:
    """The checks that need no decoding: exists, is a file, not empty, not too large."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path.name}: the file is empty (0 bytes)")
    if size > limits.max_file_bytes:
        raise VideoError(f"{path.name}: the file is {size / MB:.0f} MB; the limit is "
                         f"{limits.max_file_mb:.0f} MB. Trim or compress the clip.")
    return path


def open_capture(path: Path) -> cv2.VideoCapture:
    """An FFmpeg capture of a video file; images and non-video files are turned away here."""
    if cv2.haveImageReader(str(path)):  # FFmpeg would open an image as a one-frame video
        raise VideoError(f"{path.name}: this is an image, not a video. Upload a video clip.")
    try:
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    except cv2.error:
        capture = None
    if capture is None or not capture.isOpened():
        raise VideoError(f"{path.name}: not a readable video (not a video file, audio only, "
                         "or corrupt/truncated)")
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    if fourcc.to_bytes(4, "little") in TEXT_CODECS:
        capture.release()
        raise VideoError(f"{path.name}: not a readable video (this is a text file). "
                         "Upload a video clip.")
    return capture


def stream_info(capture: cv2.VideoCapture, path: Path, limits: Limits) -> tuple[float, int]:
    """Frame rate and frame count, after the pixel and duration limits are checked."""
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width <= 0 or height <= 0:
        raise VideoError(f"{path.name}: no video stream (audio only?)")
    if width * height > limits.max_frame_pixels:
        raise VideoError(f"{path.name}: frames are {width}x{height}; the limit is "
                         f"{limits.max_frame_pixels / 1e6:.1f} megapixels per frame (4096x2160). "
                         "Downscale the clip.")
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not 0 < fps <= MAX_FPS:  # also rejects NaN
        raise VideoError(f"{path.name}: the video has no usable frame rate ({fps}); the file is "
                         "damaged. Re-encode it as H.264 MP4.")
    max_count = int(limits.max_duration_s * fps)
    frame_count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    if not 0 < frame_count < 2**31:  # the container does not say: count by decoding
        frame_count = count_frames(path, stop_after=max_count + 1)
    frame_count = int(frame_count)
    if frame_count <= 0:
        raise VideoError(f"{path.name}: the video has no frames")
    if frame_count > max_count:
        raise VideoError(f"{path.name}: the clip is {frame_count / fps:.1f} s long; the limit is "
                         f"{limits.max_duration_s:g} s. Trim it.")
    return fps, frame_count


def count_frames(path: Path, *, stop_after: int) -> int:
    """Frames in a stream whose container has no count, stopping once past the duration limit."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        count = 0
        while count < stop_after and capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def spread_indices(frame_count: int, num_frames: int) -> list[int]:
    """The middle frame of each of `num_frames` equal segments: even spacing that skips the
    first and last frame, which are often fades, black, or missing from the stream."""
    return sorted({int((i + 0.5) * frame_count / num_frames) for i in range(num_frames)})


def read_frames(capture: cv2.VideoCapture, indices: list[int]
                ) -> Iterator[tuple[int, np.ndarray | None]]:
    """(index, BGR frame or None where it failed to decode) for sorted `indices`."""
    position: int | None = 0  # index of the frame the next grab() returns; None: unknown
    for index in indices:
        if position is None or index - position > SEEK_MIN_GAP:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            position = index
        ok = True
        while ok and position < index:
            ok, position = capture.grab(), position + 1
        frame = capture.retrieve()[1] if ok and capture.grab() else None
        if frame is None or frame.size == 0:
            position = None  # past damage, seek to the next index instead of grabbing blindly
            yield index, None
        else:
            position = index + 1
            yield index, frame


def fit_long_side(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the long side is at most `long_side`; never up."""
    scale = min(1.0, long_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_rgb(frame: np.ndarray, *, size: tuple[int, int]) -> np.ndarray:
    """BGR frame -> RGB at (width, height) `size` (area interpolation when shrinking)."""
    if (frame.shape[1], frame.shape[0]) != size:
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
