"""Frame sampling: N frames spread evenly over a clip, decoding only what reaching them needs.

Decoding goes through PyAV (FFmpeg's libraries, with the decoder's own threads): it reads every
common format, AV1 included (libdav1d), which OpenCV's bundled FFmpeg cannot. When the sampled
frames lie several frames apart, frames that no other frame refers to (H.264/HEVC B-frames) are
not decoded at all, and each sample is the decodable frame nearest its even spot: on the 10 s
1080p DFDC clips 152 of 300 frames decode instead of all 300, and every sample lies within a
frame of its spot. Timestamps are the frames' own (pts x time base), not index / fps.

Every way an upload can be unusable (missing, empty, an image, audio only, corrupt, too big or
too long) ends in a one-line VideoError, never a traceback. Frames that fail to decode part-way
are reported, and the ones that did decode are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import av
import cv2
import numpy as np

from ..errors import DeepfakeKDError, VideoError
from ..limits import MB, Limits

# Seeking restarts decoding at the previous keyframe; decoding forward passes every frame on the
# way. The DFDC clips have a keyframe only every 250+ frames (x264's default), so seek only
# across gaps longer than that, where seeking decodes fewer frames than going forward would.
SEEK_MIN_GAP = 250
# Skip non-reference frames only when samples lie at least this many frames apart: B-frames come
# in runs of at most 3 with common encoders, so the nearest reference frame is at most 2 frames
# from a sample's spot, well inside half the spacing. Closer samples need every frame.
NONREF_MIN_GAP = 4
MAX_FPS = 1000.0  # above this the container's frame rate is nonsense, not a fast camera
# FFmpeg's tty demuxer opens any .txt/.ans file as a "video" of rendered text (codec 'ansi').
TEXT_CODECS = {"ansi"}
UNREADABLE = ("not a readable video (not a video file, audio only, or corrupt/truncated)")


def quiet_ffmpeg() -> None:
    """Silence FFmpeg's and OpenCV's own log lines ("moov atom not found"): the errors here
    say what went wrong in one line, and those lines would only bury it (or scatter over a
    progress bar). PyAV's FFmpeg is silent unless told otherwise; OpenCV's (which still writes
    the generated clips) reads its variable before first use, and a value already set wins."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    av.logging.set_level(None)


@dataclass
class SampledVideo:
    """Sampled frames (uint8 RGB, upright, resized to `scale` of the original) and their clip."""

    path: str
    fps: float
    width: int  # of the display-oriented frames (rotation applied), before any resizing
    height: int
    frame_count: int
    duration: float  # seconds
    scale: float  # kept frame size / original size (<= 1)
    frames: list[np.ndarray]  # of equal size, in the order of `indices`
    indices: list[int]  # frame numbers, round(timestamp x fps)
    timestamps: list[float]  # seconds from the stream's start, from each frame's own pts
    failed: list[int]  # sampled indices that did not decode
    decoded: int = 0  # frames the decoder produced to reach the sampled ones (cost, for bench)


@dataclass
class StreamInfo:
    fps: float
    frame_count: int
    start: int  # the stream's first pts (0 where the container does not say)
    time_base: Fraction


def sample_frames(path: str | Path, num_frames: int = 32, limits: Limits = Limits(), *,
                  on_frame: Callable[[np.ndarray], None] | None = None) -> SampledVideo:
    """Decode `num_frames` frames evenly spread over the clip (all frames of a shorter clip).
    `on_frame(frame)` sees each kept frame as soon as it is decoded (face detection can start
    on it while later frames decode)."""
    if not 1 <= num_frames <= limits.max_frames:
        raise DeepfakeKDError(f"number of frames must be between 1 and {limits.max_frames}, "
                              f"got {num_frames}")
    path = check_file(path, limits)
    frames, kept, timestamps, failed = [], [], [], []
    original_size = kept_size = None  # (width, height), from the first decoded frame
    with open_container(path) as container:
        stream = video_stream(container, path)
        info = stream_info(container, stream, path, limits)
        sampler = FrameSampler(container, stream, info,
                               spread_indices(info.frame_count, num_frames))
        for index, seconds, frame in sampler:
            if frame is None:
                failed.append(index)
                continue
            image = upright_rgb(frame)
            if original_size is None:
                original_size = image.shape[1], image.shape[0]
                kept_size = fit_long_side(original_size, limits.keep_long_side)
            frames.append(resize(image, kept_size))  # shrink now: memory stays bounded
            timestamps.append(seconds)
            kept.append(round(seconds * info.fps))
            if on_frame is not None:
                on_frame(frames[-1])
    if not frames:
        raise VideoError(f"{path.name}: none of its frames could be decoded; the file is corrupt "
                         "or uses a codec this build cannot read. Re-encode it as H.264 MP4.")
    return SampledVideo(
        path=str(path), fps=info.fps, width=original_size[0], height=original_size[1],
        frame_count=info.frame_count, duration=info.frame_count / info.fps,
        scale=kept_size[0] / original_size[0], frames=frames, indices=kept,
        timestamps=timestamps, failed=failed, decoded=sampler.decoded)


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


def open_container(path: Path) -> av.container.InputContainer:
    """An FFmpeg demuxer for a video file; images and non-media files are turned away here."""
    if cv2.haveImageReader(str(path)):  # FFmpeg would open an image as a one-frame video
        raise VideoError(f"{path.name}: this is an image, not a video. Upload a video clip.")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        raise VideoError(f"{path.name}: {UNREADABLE}") from None


def video_stream(container: av.container.InputContainer, path: Path) -> av.video.VideoStream:
    """The first video stream, set to decode with FFmpeg's own threads (frame and slice)."""
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path.name}: {UNREADABLE}")
    stream = container.streams.video[0]
    if stream.codec_context.name in TEXT_CODECS:
        container.close()
        raise VideoError(f"{path.name}: not a readable video (this is a text file). "
                         "Upload a video clip.")
    stream.thread_type = "AUTO"
    return stream


def stream_info(container: av.container.InputContainer, stream: av.video.VideoStream,
                path: Path, limits: Limits) -> StreamInfo:
    """Frame rate, frame count and time base, after the pixel and duration limits are checked."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoError(f"{path.name}: no video stream (audio only?)")
    if width * height > limits.max_frame_pixels:
        raise VideoError(f"{path.name}: frames are {width}x{height}; the limit is "
                         f"{limits.max_frame_pixels / 1e6:.1f} megapixels per frame (4096x2160). "
                         "Downscale the clip.")
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    if not 0 < fps <= MAX_FPS:
        raise VideoError(f"{path.name}: the video has no usable frame rate ({fps:g}); the file "
                         "is damaged. Re-encode it as H.264 MP4.")
    max_count = int(limits.max_duration_s * fps)
    frame_count = stream.frames  # from the container's index; 0 where it has none (WebM)
    if frame_count <= 0:
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else container.duration / av.time_base if container.duration else 0.0)
        frame_count = round(duration * fps) if duration > 0 else \
            count_frames(path, stop_after=max_count + 1)
    if frame_count <= 0:
        raise VideoError(f"{path.name}: the video has no frames")
    if frame_count > max_count:
        raise VideoError(f"{path.name}: the clip is {frame_count / fps:.1f} s long; the limit is "
                         f"{limits.max_duration_s:g} s. Trim it.")
    return StreamInfo(fps=fps, frame_count=frame_count, start=stream.start_time or 0,
                      time_base=stream.time_base)


def count_frames(path: Path, *, stop_after: int) -> int:
    """Frames in a stream whose container says neither count nor duration: its packets,
    counted without decoding, stopping once past the duration limit."""
    with av.open(str(path)) as container:
        count = 0
        for packet in container.demux(video=0):
            if packet.size:
                count += 1
                if count >= stop_after:
                    break
        return count


def spread_indices(frame_count: int, num_frames: int) -> list[int]:
    """The middle frame of each of `num_frames` equal segments: even spacing that skips the
    first and last frame, which are often fades, black, or missing from the stream."""
    return sorted({int((i + 0.5) * frame_count / num_frames) for i in range(num_frames)})


class FrameSampler:
    """Iterates (target index, seconds, the decoded frame nearest it or None) for sorted target
    frame indices, decoding forward, seeking only across gaps longer than `SEEK_MIN_GAP` frames.

    A target takes the nearest decoded frame that no earlier target took, within half the
    spacing of the targets (half a frame when every frame is sampled: then only the frame
    itself). With samples at least `NONREF_MIN_GAP` frames apart, non-reference frames are not
    decoded (`skip_frame = NONREF`); should a target find no frame near it that way (a stream
    whose reference frames lie far apart), it is decoded again from its keyframe with every
    frame, and so is the rest of the clip. A target with no decodable frame near it (a damaged
    or truncated file) gets None. `decoded` counts the frames the decoder produced."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.VideoStream,
                 info: StreamInfo, targets: list[int]):
        self.container, self.stream, self.info, self.targets = container, stream, info, targets
        spacing = info.frame_count / max(len(targets), 1)
        self.tolerance = max(0.5, spacing / 2) / info.fps  # seconds
        self.skip_nonref = spacing >= NONREF_MIN_GAP
        self.decoded = 0

    def __iter__(self) -> Iterator[tuple[int, float, av.VideoFrame | None]]:
        fps = self.info.fps
        self.stream.codec_context.skip_frame = "NONREF" if self.skip_nonref else "DEFAULT"
        frames = self.decode()
        last = 0.0  # time of the last decoded frame, seconds
        taken = -1.0  # time of the frame the last target took
        previous: tuple[float, av.VideoFrame] | None = None  # the latest frame before the spot
        k = 0
        while k < len(self.targets):
            spot = self.targets[k] / fps
            if (spot - last) * fps > SEEK_MIN_GAP:
                frames, previous = self.decode(seek=spot), None
            current = None  # the first frame at or after the spot
            for time, frame in frames:
                last = time
                if time >= spot:
                    current = time, frame
                    break
                previous = time, frame
            near = [(abs(time - spot), time, frame)
                    for time, frame in filter(None, (previous, current))
                    if time > taken and abs(time - spot) <= self.tolerance]
            if near:
                _, taken, frame = min(near, key=lambda item: item[0])
                yield self.targets[k], taken, frame
            elif current is not None and self.skip_nonref:  # skipped frames were needed here
                self.skip_nonref = False
                self.stream.codec_context.skip_frame = "DEFAULT"
                frames, previous = self.decode(seek=spot), None
                continue  # the same target again
            else:
                yield self.targets[k], spot, None
            previous = current or previous
            k += 1

    def decode(self, seek: float | None = None) -> Iterator[tuple[float, av.VideoFrame]]:
        """(seconds, frame) in presentation order, from the start or from the keyframe at or
        before `seek` seconds. A packet that fails to decode is passed over (its frames are
        missing, not fatal); a container that cannot be read further ends the stream."""
        info = self.info
        try:
            if seek is not None:
                self.container.seek(info.start + int(seek / info.time_base), stream=self.stream)
            time = None
            for packet in self.container.demux(self.stream):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    continue
                for frame in decoded:
                    self.decoded += 1
                    # a frame without a timestamp: the one after the last, in order
                    time = (float((frame.pts - info.start) * info.time_base)
                            if frame.pts is not None
                            else 0.0 if time is None else time + 1 / info.fps)
                    yield time, frame
        except av.error.FFmpegError:
            return


def upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """The frame as uint8 RGB the way a player shows it: a phone clip stored sideways carries a
    rotation in its display matrix (`frame.rotation`, counter-clockwise degrees; -90 on a
    portrait phone clip), which FFmpeg reports but does not apply. A sideways face is not
    found by MTCNN, so the pixels are turned here, as OpenCV's reader did."""
    image = frame.to_ndarray(format="rgb24")
    turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def fit_long_side(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the long side is at most `long_side`; never up."""
    scale = min(1.0, long_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB frame at (width, height) `size` (area interpolation when shrinking)."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
