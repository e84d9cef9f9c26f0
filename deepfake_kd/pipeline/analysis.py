"""The one analysis: clip -> sampled frames -> faces and tracks -> each model's scores -> verdict.

Faces are detected once and the same crops go to every model; each model preprocesses them
itself. Models score smallest first, and `analysis_steps` hands out the result after each one,
so a caller can show the student's answer while the teacher is still scoring. The verdict
follows the reference rule of Cross Efficient ViT: a face track's score is the mean fake
probability of its faces, and the clip is fake if any track's mean exceeds the threshold (0.55).
The CLI (`tools.analyze`) and the app (`serving`) only render the `AnalysisResult`.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from ..limits import Limits
from ..models import FaceClassifier
from ..models.base import preprocessed_batches
from ..roles import DEFAULT_THRESHOLD
from .faces import Box, Face, FaceDetector
from .tta import TTA_PASSES
from .video import SampledVideo, sample_frames

FAKE, REAL, NO_FACE = "FAKE", "REAL", "NO FACE"
# Images per model call: bounds memory on clips with many faces, and what ONNX Runtime's arena
# keeps after a call (the teacher: +417 MB at 16, +840 MB at 32, for 13.3 and 13.0 ms per face).
# A test-time augmented model runs each crop several times in one call: it gets fewer crops.
MODEL_BATCH = 16
OVERLAP_DECODING = True  # decode in a background thread while faces are detected


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
    tta: str  # test-time augmentation of its answers: "flip" (face and mirror) or "none"
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
    models: dict[str, ModelResult]  # every model once complete; those scored so far before
    timings_ms: dict[str, float]  # sampling, detection, frames_and_faces (both, overlapped)
    # frames decoded to reach the sampled ones; sampled frames searched by full MTCNN, and
    # those whose faces were followed from the searched ones (see FaceDetector)
    work: dict[str, int] = field(default_factory=dict)

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


def analyze_video(path: str | Path, models: Mapping[str, FaceClassifier], **options
                  ) -> AnalysisResult:
    """Analyse one clip with every model in `models` (name -> model) on the same face crops:
    the last, complete result of `analysis_steps` (same options)."""
    *_, result = analysis_steps(path, models, **options)
    return result


def analysis_steps(path: str | Path, models: Mapping[str, FaceClassifier], *,
                   num_frames: int = 32, threshold: float = DEFAULT_THRESHOLD,
                   detector: FaceDetector | None = None, limits: Limits = Limits(),
                   sources: Mapping[str, str] | None = None, min_track_share: float = 0.2,
                   progress: Callable[[float, str], None] | None = None,
                   overlap: bool = OVERLAP_DECODING) -> Iterator[AnalysisResult]:
    """The result once each model has scored, models in order of size (smallest first: the
    quickest answer comes first); the last one is complete. Each lists the models scored so
    far in the order of `models`, and faces with their scores.

    Pass a `detector` to reuse one MTCNN across calls (an app builds it once); without one,
    this call builds its own. `sources` names where each model's weights came from (shown in
    the result). Tracks with fewer faces than `min_track_share` of the longest track are
    reported but left out of the verdict: on a DFDC dev clip such a track was a head's shadow,
    and a stray crop or two could flip the "any track" rule. `progress(fraction, description)`
    is called as stages finish. `overlap` (default): detect faces while later frames still
    decode (see `frames_and_faces`); False decodes every frame first.
    """
    report = progress or (lambda fraction, description: None)
    detector = detector or FaceDetector()
    report(0.0, "Sampling frames")
    video, faces_per_frame, timings_ms, work = frames_and_faces(
        path, num_frames=num_frames, limits=limits, detector=detector, overlap=overlap,
        progress=lambda f: report(0.6 * f, "Detecting faces" if f else "Sampling frames"))

    faces = [(i, face) for i, frame_faces in enumerate(faces_per_frame) for face in frame_faces]
    crops = np.stack([face.crop for _, face in faces]) if faces else None
    tracks = summarize_tracks(faces, timestamps=video.timestamps, min_share=min_track_share)
    counted = {t.track_id for t in tracks if t.counted}
    results, probs = {}, {}
    order = sorted(models, key=lambda name: models[name].num_parameters())
    for k, name in enumerate(order):
        model = models[name]
        report(0.6 + 0.4 * k / len(models), f"Scoring faces: {name}")
        probs[name], seconds = score_crops(model, crops) if faces else ([], 0.0)
        results[name] = model_result(
            name, model, probs=probs[name], track_ids=[face.track_id for _, face in faces],
            counted=counted, seconds=seconds, threshold=threshold,
            source=(sources or {}).get(name, "in memory"))
        if k + 1 == len(order):
            report(1.0, "Done")
        scored = [name for name in models if name in results]  # in the order given
        yield AnalysisResult(
            path=video.path, fps=video.fps, width=video.width, height=video.height,
            duration=video.duration, frame_count=video.frame_count, failed_frames=video.failed,
            threshold=threshold, no_face=not faces,
            frames=[SampledFrame(index=index, timestamp=timestamp, num_faces=len(frame_faces))
                    for index, timestamp, frame_faces
                    in zip(video.indices, video.timestamps, faces_per_frame)],
            tracks=tracks,
            faces=[FaceScore(frame_index=video.indices[i], timestamp=video.timestamps[i],
                             track_id=face.track_id,
                             box=tuple(v / video.scale for v in face.box),
                             detection_prob=face.prob, crop=face.crop,
                             probs={name: float(probs[name][j]) for name in scored})
                   for j, (i, face) in enumerate(faces)],
            models={name: results[name] for name in scored}, timings_ms=timings_ms,
            work=work)


def frames_and_faces(path: str | Path, *, num_frames: int, limits: Limits,
                     detector: FaceDetector, overlap: bool,
                     progress: Callable[[float], None] = lambda fraction: None
                     ) -> tuple[SampledVideo, list[list[Face]], dict[str, float], dict[str, int]]:
    """Sampled frames, faces per frame, timings: `sampling` (decoding, wall time),
    `detection` (time spent detecting) and `frames_and_faces` (wall time of both), and the work
    done: frames decoded, frames searched and followed by the detector.

    With `overlap`, frames decode in a background thread while MTCNN runs on the batches
    already decoded (the decoder releases the GIL), so the two stages share the wall time;
    `sampling` + `detection` - `frames_and_faces` is what that saved. On by default
    (`OVERLAP_DECODING`), with each key frame searched as it arrives (`detect(eager=True)`):
    on an idle 2-core Xeon (`bench --clip lynaeydofd.mp4`, median of 3) 0.68-0.70 s of 0.77 s
    of detection overlapped decoding, and the student's answer came 0.15 s sooner than with key
    frames searched 8 at a time (which overlapped 0.08 s). Same frames, same faces."""
    start = time.perf_counter()
    counts: dict[str, int] = {}
    if not overlap:
        video = sample_frames(path, num_frames=num_frames, limits=limits)
        sampled = time.perf_counter()
        faces = detector.detect(video.frames, progress=progress, counts=counts)
        done = time.perf_counter()
        return video, faces, {"sampling": 1000 * (sampled - start),
                              "detection": 1000 * (done - sampled),
                              "frames_and_faces": 1000 * (done - start)}, \
            work_done(video, counts)
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
        faces = detector.detect(stream(), progress=progress, total=num_frames, counts=counts,
                                eager=True)
        video, sampled = decoding.result()  # raises what decoding raised (VideoError, ...)
    done = time.perf_counter()
    return video, faces, {"sampling": 1000 * (sampled - start),
                          "detection": 1000 * (done - start - waited),
                          "frames_and_faces": 1000 * (done - start)}, work_done(video, counts)


def work_done(video: SampledVideo, counts: dict[str, int]) -> dict[str, int]:
    return {"frames_decoded": video.decoded, "frames_searched": counts["detected"],
            "frames_followed": counts["tracked"]}


def score_crops(model: FaceClassifier, crops: np.ndarray) -> tuple[list[float], float]:
    """Fake probabilities for uint8 RGB crops, and the seconds spent in model calls only.
    Puts the model in eval mode: scores must not depend on dropout or batch statistics."""
    model.eval()
    seconds, probs = 0.0, []
    with torch.inference_mode():
        model.predict_proba(model.preprocess(crops[:1]))  # warm-up: lazy init, allocator
        for x in preprocessed_batches(model, crops, MODEL_BATCH // TTA_PASSES[model.tta]):
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
        name=name, source=source, num_parameters=model.num_parameters(), tta=model.tta,
        inference_ms=1000 * seconds, ms_per_face=1000 * seconds / max(len(probs), 1),
        track_probs=track_probs, video_prob=video_prob, verdict=verdict)
