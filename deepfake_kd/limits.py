"""What one analysis accepts: the bounds that keep time and memory predictable for any upload.

One `Limits` object travels from the caller (CLI, app, tests) through video sampling and face
detection, so a Space and a laptop can set different bounds without touching the pipeline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Mapping

from .errors import DeepfakeKDError

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Hard limits (exceeding one raises VideoError) and the frame size kept in memory.

    - `max_file_mb`: size of the upload on disk.
    - `max_duration_s`: length of the clip; sampling cost grows with it because frames between
      the sampled ones are decoded to reach them.
    - `max_frame_pixels`: width x height of the video stream; 4096x2160 (DCI 4K) is the largest
      accepted, which covers phone and camera footage.
    - `max_frames`: how many frames one analysis may sample.
    - `keep_long_side`: not a rejection limit. Every sampled frame is resized on read so its long
      side is at most this, which bounds memory at about
      max_frames x keep_long_side^2 x 9/16 x 3 bytes (128 frames of 1920x1080: 0.8 GB; the
      default 32 frames: 0.2 GB). 1920 keeps 1080p clips (the DFDC training videos) at full
      resolution, so face crops see the same pixels the training crops did; 4K is halved.
    """

    max_file_mb: float = 200.0
    max_duration_s: float = 300.0
    max_frame_pixels: int = 4096 * 2160
    max_frames: int = 128
    keep_long_side: int = 1920

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)


@dataclass(frozen=True)
class AppLimits:
    """Every bound of the web app in one place (the README states them).

    - `analysis`: the `Limits` each request runs under; shorter clips and fewer frames than
      the CLI takes, so one request stays well under a minute on a Space's free CPU. Measured
      on one CPU thread: the full teacher scores a face in about 65 ms, the student in about
      1 ms, and MTCNN takes about 0.1 s per 640x360 frame; by these figures 64 frames with one
      face each need about 11 s, about 15 s with flip averaging (the default: every face
      scored twice), plus the decoding that sampling a long clip takes.
      The upload limit is also handed to Gradio (`max_file_size`), so an over-large file is
      refused while uploading instead of after.
    - `default_frames`: the frame slider's starting value (as the CLI's `--frames`).
    - `concurrency`: analyses running at once. One: the models share the CPU, and two at once
      would each take twice as long and report inflated inference times.
    - `max_queue`: requests waiting behind it; the next one is told the queue is full.
    - `max_gallery`: face crops shown in the gallery (spread over the clip); the JSON has all.
    - `cache_ttl_s`: uploads, crops and result files are deleted after this long (a Space's
      disk stays bounded; a user downloads the JSON right after the analysis), checked every
      `cache_sweep_s`; all of them are deleted when the server stops.

    `AppLimits.from_env()` is what `python app.py` serves with: these values, or the ones the
    variables in `ENV_APP_LIMITS` set (the load test starts servers with a small upload limit
    and a tiny queue this way; a Space can tune itself without editing code).
    """

    analysis: Limits = Limits(max_file_mb=100.0, max_duration_s=120.0, max_frames=64)
    default_frames: int = 32
    concurrency: int = 1
    max_queue: int = 16
    max_gallery: int = 48
    cache_ttl_s: int = 3600

    @property
    def cache_sweep_s(self) -> int:
        """How often expired files are looked for: a sixth of their lifetime, 1 s to 10 min."""
        return max(1, min(600, self.cache_ttl_s // 6))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppLimits:
        """The defaults, with any limit that a variable of `ENV_APP_LIMITS` sets; a value that
        is not a positive number stops the start-up with a message naming the variable."""
        environ = os.environ if environ is None else environ
        limits, analysis = {}, {}
        for variable, (target, name, kind) in ENV_APP_LIMITS.items():
            text = environ.get(variable, "").strip()
            if not text:
                continue
            try:
                value = kind(text)
                if not value > 0:
                    raise ValueError
            except ValueError:
                raise DeepfakeKDError(f"{variable}={text!r}: expected a positive "
                                      f"{'whole number' if kind is int else 'number'}") from None
            (analysis if target == "analysis" else limits)[name] = value
        base = cls()
        return replace(base, analysis=replace(base.analysis, **analysis), **limits)


# variable -> (which limits, field, type); README "Using the app" lists them.
ENV_APP_LIMITS = {
    "DEEPFAKE_KD_MAX_UPLOAD_MB": ("analysis", "max_file_mb", float),
    "DEEPFAKE_KD_MAX_DURATION_S": ("analysis", "max_duration_s", float),
    "DEEPFAKE_KD_MAX_QUEUE": ("app", "max_queue", int),
    "DEEPFAKE_KD_CACHE_TTL_S": ("app", "cache_ttl_s", int),
}
