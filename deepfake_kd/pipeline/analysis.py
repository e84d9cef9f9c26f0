"""The one analysis: clip -> sampled frames -> faces and tracks -> each model's scores -> verdict.

Faces are detected once and the same crops go to every model; each model preprocesses them
itself. The verdict follows the reference rule of Cross Efficient ViT: a face track's score is
the mean fake probability of its faces, and the clip is fake if any track's mean exceeds the
threshold (0.55). The CLI (`analyze`) and the app only render the `AnalysisResult`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Callable, Mapping

import cv2
import numpy as np
import torch

from .errors import DeepfakeKDError, ModelNotFoundError
from .faces import Box, Face, FaceDetector
from .limits import Limits
from .models import (CrossEfficientViT, FaceClassifier, TinyEfficientNet, default_reference,
                     load_model)
from .models.hub import DEFAULT_REFERENCES, MODEL_CLASSES
from .video import SampledVideo, sample_frames

Progress = Callable[[float], None]

DEFAULT_THRESHOLD = 0.55
FAKE, REAL, NO_FACE = "FAKE", "REAL", "NO FACE"
MODEL_BATCH = 32  # crops per model call: bounds memory on clips with many faces
UNTRAINED = "untrained (random weights)"


@dataclass
class FaceScore:
    frame_index: int
    timestamp: float
    track_id: int
    box: Box  # x1, y1, x2, y2 in pixels of the original video
    detection_prob: float
    probs: dict[str, float]  # model name -> fake probability
    crop: np.ndarray = field(repr=False, metadata={"json": False})  # what the models saw


@dataclass
class SampledFrame:
    index: int
    timestamp: float
    num_faces: int


@dataclass
class Track:
    track_id: int
    num_faces: int
    first_timestamp: float
    last_timestamp: float
    counted: bool  # False: too brief to be a person (e.g. a false detection); not in the verdict


@dataclass
class ModelResult:
    name: str
    source: str  # the weights reference it was loaded from
    num_parameters: int
    inference_ms: float  # model calls only, after a warm-up call
    ms_per_face: float
    track_probs: dict[int, float]  # track id -> mean fake probability
    video_prob: float | None  # max over counted tracks; None without faces
    verdict: str  # FAKE, REAL or NO FACE


@dataclass
class AnalysisResult:
    path: str
    fps: float
    width: int
    height: int
    duration: float
    frame_count: int
    failed_frames: list[int]  # sampled frames that did not decode
    threshold: float
    no_face: bool
    frames: list[SampledFrame]
    tracks: list[Track]
    faces: list[FaceScore]
    models: dict[str, ModelResult]
    timings_ms: dict[str, float]  # sampling, detection, frames_and_faces (both, overlapped)

    def to_dict(self) -> dict:
        """Plain JSON-ready data: everything but the crop pixels."""
        return plain(self)


def plain(value):
    if is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)
                if f.metadata.get("json", True)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def analyze_video(path: str | Path, models: Mapping[str, FaceClassifier], *,
                  num_frames: int = 32, threshold: float = DEFAULT_THRESHOLD,
                  detector: FaceDetector | None = None, limits: Limits = Limits(),
                  sources: Mapping[str, str] | None = None, min_track_share: float = 0.2,
                  progress: Callable[[float, str], None] | None = None,
                  overlap: bool = False) -> AnalysisResult:
    """Analyse one clip with every model in `models` (name -> model) on the same face crops.

    Pass a `detector` to reuse one MTCNN across calls (an app builds it once); without one,
    this call builds its own. `sources` names where each model's weights came from (shown in
    the result). Tracks with fewer faces than `min_track_share` of the longest track are
    reported but left out of the verdict: on a DFDC dev clip such a track was a head's shadow,
    and a stray crop or two could flip the "any track" rule. `progress(fraction, description)`
    is called as stages finish. `overlap`: detect faces while later frames still decode (see
    `frames_and_faces`).
    """
    report = progress or (lambda fraction, description: None)
    detector = detector or FaceDetector()
    report(0.0, "Sampling frames")
    video, faces_per_frame, timings_ms = frames_and_faces(
        path, num_frames=num_frames, limits=limits, detector=detector, overlap=overlap,
        progress=lambda f: report(0.6 * f, "Detecting faces" if f else "Sampling frames"))

    faces = [(i, face) for i, frame_faces in enumerate(faces_per_frame) for face in frame_faces]
    crops = np.stack([face.crop for _, face in faces]) if faces else None
    tracks = summarize_tracks(faces, timestamps=video.timestamps, min_share=min_track_share)
    counted = {t.track_id for t in tracks if t.counted}
    results, probs = {}, {}
    for k, (name, model) in enumerate(models.items()):
        report(0.6 + 0.4 * k / len(models), f"Scoring faces: {name}")
        probs[name], seconds = score_crops(model, crops) if faces else ([], 0.0)
        results[name] = model_result(
            name, model, probs=probs[name], track_ids=[face.track_id for _, face in faces],
            counted=counted, seconds=seconds, threshold=threshold,
            source=(sources or {}).get(name, "in memory"))
    report(1.0, "Done")
    return AnalysisResult(
        path=video.path, fps=video.fps, width=video.width, height=video.height,
        duration=video.duration, frame_count=video.frame_count, failed_frames=video.failed,
        threshold=threshold, no_face=not faces,
        frames=[SampledFrame(index=index, timestamp=timestamp, num_faces=len(frame_faces))
                for index, timestamp, frame_faces
                in zip(video.indices, video.timestamps, faces_per_frame)],
        tracks=tracks,
        faces=[FaceScore(frame_index=video.indices[i], timestamp=video.timestamps[i],
                         track_id=face.track_id, box=tuple(v / video.scale for v in face.box),
                         detection_prob=face.prob, crop=face.crop,
                         probs={name: float(p[j]) for name, p in probs.items()})
               for j, (i, face) in enumerate(faces)],
        models=results, timings_ms=timings_ms)


def frames_and_faces(path: str | Path, *, num_frames: int, limits: Limits,
                     detector: FaceDetector, overlap: bool = False,
                     progress: Callable[[float], None] = lambda fraction: None
                     ) -> tuple[SampledVideo, list[list[Face]], dict[str, float]]:
    """Sampled frames, faces per frame, and timings: `sampling` (decoding, wall time),
    `detection` (time spent detecting) and `frames_and_faces` (wall time of both).

    With `overlap`, frames decode in a background thread while MTCNN runs on the batches
    already decoded (the decoder releases the GIL), so on two or more idle cores the two stages
    could share the wall time; `sampling` + `detection` - `frames_and_faces` is what that saved.
    Off by default: on the 2-core EPYC shared with training jobs it saved nothing (the four dev
    clips: 24.2 s sequential, 24.6 s overlapped, interleaved); measure it on an idle machine with
    `bench --overlap` before turning it on."""
    start = time.perf_counter()
    if not overlap:
        video = sample_frames(path, num_frames=num_frames, limits=limits)
        sampled = time.perf_counter()
        faces = detector.detect(video.frames, progress=progress)
        done = time.perf_counter()
        return video, faces, {"sampling": 1000 * (sampled - start),
                              "detection": 1000 * (done - sampled),
                              "frames_and_faces": 1000 * (done - start)}
    decoded: queue.SimpleQueue = queue.SimpleQueue()
    end = object()
    waited = 0.0

    def decode() -> tuple[SampledVideo, float]:
        try:
            return (sample_frames(path, num_frames=num_frames, limits=limits,
                                  on_frame=decoded.put), time.perf_counter())
        finally:
            decoded.put(end)

    def stream():
        nonlocal waited
        while True:
            tic = time.perf_counter()
            frame = decoded.get()
            waited += time.perf_counter() - tic
            if frame is end:
                return
            yield frame

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        decoding = pool.submit(decode)
        faces = detector.detect(stream(), progress=progress, total=num_frames)
        video, sampled = decoding.result()  # raises what decoding raised (VideoError, ...)
    done = time.perf_counter()
    return video, faces, {"sampling": 1000 * (sampled - start),
                          "detection": 1000 * (done - start - waited),
                          "frames_and_faces": 1000 * (done - start)}


def score_crops(model: FaceClassifier, crops: np.ndarray) -> tuple[list[float], float]:
    """Fake probabilities for uint8 RGB crops, and the seconds spent in model calls only.
    Puts the model in eval mode: scores must not depend on dropout or batch statistics."""
    model.eval()
    seconds, probs = 0.0, []
    with torch.inference_mode():
        model.predict_proba(model.preprocess(crops[:1]))  # warm-up: lazy init, allocator
        for start in range(0, len(crops), MODEL_BATCH):
            x = model.preprocess(crops[start:start + MODEL_BATCH])
            tic = time.perf_counter()
            p = model.predict_proba(x)
            seconds += time.perf_counter() - tic
            probs += p.tolist()
    return probs, seconds


def summarize_tracks(faces: list[tuple[int, Face]], *, timestamps: list[float],
                     min_share: float) -> list[Track]:
    """One Track per track id; `counted` unless it is much shorter than the longest track."""
    frames_of: dict[int, list[int]] = {}
    for i, face in faces:
        frames_of.setdefault(face.track_id, []).append(i)
    longest = max((len(f) for f in frames_of.values()), default=0)
    return [Track(track_id=track, num_faces=len(frames), first_timestamp=timestamps[frames[0]],
                  last_timestamp=timestamps[frames[-1]],
                  counted=len(frames) >= min_share * longest)
            for track, frames in sorted(frames_of.items())]


def model_result(name: str, model: FaceClassifier, *, probs: list[float], track_ids: list[int],
                 counted: set[int], seconds: float, threshold: float, source: str
                 ) -> ModelResult:
    """The reference rule: mean per track; fake if any counted track's mean > threshold."""
    per_track: dict[int, list[float]] = {}
    for track, p in zip(track_ids, probs):
        per_track.setdefault(track, []).append(p)
    track_probs = {track: float(np.mean(ps)) for track, ps in sorted(per_track.items())}
    video_prob = max((p for t, p in track_probs.items() if t in counted), default=None)
    verdict = NO_FACE if video_prob is None else FAKE if video_prob > threshold else REAL
    return ModelResult(
        name=name, source=source, num_parameters=model.num_parameters(),
        inference_ms=1000 * seconds, ms_per_face=1000 * seconds / max(len(probs), 1),
        track_probs=track_probs, video_prob=video_prob, verdict=verdict)


# --- command line ---------------------------------------------------------------------------

MODEL_ROLES: dict[str, type[FaceClassifier]] = {"teacher": CrossEfficientViT,
                                                "student": TinyEfficientNet}


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze", help="score a video clip with the teacher and the student",
        description="Sample frames, find faces once, score them with both models, and print "
                    "each model's verdict (fake if any face track's mean score > threshold).")
    parser.add_argument("clip", help="video file (mp4, mov, avi, webm, ...)")
    parser.add_argument("--frames", type=int, default=32, metavar="N",
                        help="frames to sample (default 32)")
    parser.add_argument("--threshold", type=probability, default=DEFAULT_THRESHOLD, metavar="T",
                        help=f"fake if a track's mean exceeds this (default {DEFAULT_THRESHOLD})")
    add_model_arguments(parser, untrained_help="tries the pipeline before training; its "
                                               "scores mean nothing")
    add_runtime_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.set_defaults(run=run_cli)


def add_runtime_argument(parser) -> None:
    parser.add_argument("--runtime", action="append", metavar="[ROLE=]NAME",
                        help="inference runtime: eager (default), jit, or onnx (ONNX Runtime, "
                             "pip install onnxruntime onnx); for every model, or ROLE=NAME for "
                             "one (repeatable). Same probabilities, less time; onnx-int8 "
                             "(int8, needs --calibration) changes them slightly.")
    parser.add_argument("--calibration", metavar="MANIFEST",
                        help="face crops for onnx-int8: a few hundred from this manifest's "
                             "train split")


def add_model_arguments(parser: argparse.ArgumentParser, *, untrained_help: str) -> None:
    """--teacher / --student REF and --untrained, as `load_cli_models` reads them."""
    for role in MODEL_ROLES:
        parser.add_argument(f"--{role}", metavar="REF",
                            help=f"{role} weights: a folder or Hub repo id[@rev] "
                                 f"(default {default_reference(role)})")
    parser.add_argument("--untrained", action="store_true",
                        help=f"random weights for every model not given by REF: {untrained_help}")


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def run_cli(args: argparse.Namespace) -> int:
    # The errors below say what went wrong in one line; OpenCV's and FFmpeg's own log lines
    # ("moov atom not found") would only bury it. FFmpeg reads this before its first use.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    models, sources = load_cli_models(args)
    models, sources = apply_runtimes(models, sources, args.runtime, args.calibration)
    result = analyze_video(args.clip, models, num_frames=args.frames, threshold=args.threshold,
                           detector=FaceDetector(), sources=sources)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_summary(result))
    return 0


def load_cli_models(args: argparse.Namespace
                    ) -> tuple[dict[str, FaceClassifier], dict[str, str]]:
    models, sources = {}, {}
    for role, cls in MODEL_ROLES.items():
        reference = getattr(args, role)
        if reference is None and args.untrained:
            models[role], sources[role] = untrained_model(role, cls), UNTRAINED
            continue
        reference = reference or default_reference(role)
        models[role], sources[role] = load_role(role, reference), reference
    untrained = [role for role, source in sources.items() if source == UNTRAINED]
    if untrained:
        print(f"WARNING: {' and '.join(untrained)} use RANDOM weights (--untrained): their "
              "scores are meaningless; this run only exercises the pipeline.", file=sys.stderr)
    return models, sources


def apply_runtimes(models: dict[str, FaceClassifier], sources: dict[str, str],
                   runtimes: list[str] | None, calibration: str | None = None
                   ) -> tuple[dict[str, FaceClassifier], dict[str, str]]:
    """Each model behind the runtime `--runtime` names for it; its source says which."""
    from .runtime import accelerate, calibration_crops, parse_runtimes

    chosen = parse_runtimes(runtimes, models)
    crops = calibration_crops(calibration) if calibration and "onnx-int8" in chosen.values() \
        else None
    return ({name: accelerate(model, chosen[name], calibration=crops)
             for name, model in models.items()},
            {name: source if chosen[name] == "eager" else f"{source} [{chosen[name]}]"
             for name, source in sources.items()})


def untrained_model(role: str, cls: type[FaceClassifier]) -> FaceClassifier:
    """Random weights in the architecture of the role's default weights when their config.json
    is at hand (e.g. the released teacher's EfficientNet-Lite0 branches), else `cls()`."""
    config_path = Path(default_reference(role)) / "config.json"
    try:
        config = json.loads(config_path.read_text())
        model_cls = MODEL_CLASSES[config["architecture"]]
        kwargs = {k: v for k, v in config.items() if k in model_cls._init_parameter_names()}
        return model_cls(**kwargs).eval()
    except (OSError, ValueError, KeyError, TypeError):
        return cls().eval()


def load_role(role: str, reference: str) -> FaceClassifier:
    """load_model, with a message that says what to do when the default weights are absent."""
    try:
        return load_model(reference)
    except ModelNotFoundError as exc:
        if reference == str(DEFAULT_REFERENCES[role]):
            raise ModelNotFoundError(
                f"{role} weights are missing: {reference} does not exist yet (the {role} is "
                f"not trained). Pass --{role} REF (a weights folder or a Hub repo id), or add "
                "--untrained to try the pipeline with random weights.") from None
        raise DeepfakeKDError(f"--{role} {reference}: {exc}") from None


def format_summary(result: AnalysisResult) -> str:
    """A readable report: the clip, each model's verdict and cost, and a per-face table."""
    names = list(result.models)
    faced = sum(frame.num_faces > 0 for frame in result.frames)
    brief = sum(not track.counted for track in result.tracks)
    lines = [
        f"{Path(result.path).name}: {result.width}x{result.height}, {result.fps:.2f} fps, "
        f"{result.duration:.1f} s",
        f"sampled {len(result.frames) + len(result.failed_frames)} frames "
        f"({len(result.failed_frames)} failed to decode), "
        f"faces in {faced}, {len(result.tracks)} track(s)"
        + (f" ({brief} too brief to count)" if brief else "") + "; sampling "
        f"{result.timings_ms['sampling'] / 1000:.2f} s, face detection "
        f"{result.timings_ms['detection'] / 1000:.2f} s",
        "",
        f"{'model':<10} {'verdict':<8} {'p(fake)':>7} {'params':>9} {'inference':>10} "
        f"{'per face':>9}  weights",
    ]
    for m in result.models.values():
        prob = "-" if m.video_prob is None else f"{m.video_prob:.3f}"
        lines.append(f"{m.name:<10} {m.verdict:<8} {prob:>7} {m.num_parameters / 1e6:>8.2f}M "
                     f"{m.inference_ms:>8.0f}ms {m.ms_per_face:>7.1f}ms  {m.source}")
    lines.append(f"(threshold {result.threshold}: fake if any face track's mean p(fake) "
                 "exceeds it)")
    if result.no_face:
        lines.append("\nNo face found in any sampled frame: nothing to score.")
        return "\n".join(lines)
    lines += ["", f"{'frame':>6} {'time':>7} {'track':>5} " + " ".join(f"{n:>8}" for n in names)]
    faces_at: dict[int, list[FaceScore]] = {}
    for face in result.faces:
        faces_at.setdefault(face.frame_index, []).append(face)
    for frame in result.frames:
        head = f"{frame.index:>6} {frame.timestamp:>6.2f}s"
        faces = sorted(faces_at.get(frame.index, []), key=lambda face: face.track_id)
        lines += [f"{head} {face.track_id:>5} " + " ".join(f"{face.probs[n]:>8.3f}" for n in names)
                  for face in faces] or [f"{head} {'-':>5} no face"]
    return "\n".join(lines)
