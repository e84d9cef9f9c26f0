"""`python -m deepfake_kd analyze`: score a clip with the teacher and the student and print
each model's verdict (text or JSON); and the `--runtime` / `--tta` arguments that analyze and
bench share.
The analysis itself is `pipeline.analysis`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DeepfakeKDError
from ..models import FaceClassifier
from ..pipeline.analysis import AnalysisResult, FaceScore, analyze_video
from ..pipeline.faces import FaceDetector
from ..pipeline.runtime import CALIBRATION_CROPS, DEFAULT_RUNTIME, RUNTIMES, accelerate
from ..pipeline.tta import DEFAULT_TTA, with_tta
from ..pipeline.video import quiet_ffmpeg
from ..roles import DEFAULT_THRESHOLD, add_model_arguments, load_cli_models
from ..training.data import load_crops, read_samples
from .arguments import add_tta_argument, probability
from .heatmaps import add_explain_arguments, format_explanation, write_explanation


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
    add_explain_arguments(parser)
    parser.set_defaults(run=run_cli)


def add_runtime_argument(parser) -> None:
    parser.add_argument("--runtime", action="append", metavar="[ROLE=]NAME",
                        help="inference runtime: onnx (ONNX Runtime; the default), "
                             "onnx-shared (ONNX Runtime on PyTorch's copy of the weights: less "
                             "memory, slower), eager (PyTorch), folded (batch norms folded into "
                             "the convolutions) or jit; for every model, or ROLE=NAME for one "
                             "(repeatable). Same probabilities; onnx-int8 (int8, needs "
                             "--calibration) changes them slightly.")
    parser.add_argument("--calibration", metavar="MANIFEST",
                        help="face crops for onnx-int8: a few hundred from this manifest's "
                             "train split")
    add_tta_argument(parser)


def run_cli(args: argparse.Namespace) -> int:
    quiet_ffmpeg()
    models, sources = load_cli_models(args)
    models, sources = apply_runtimes(models, sources, args.runtime, args.calibration, args.tta)
    result = analyze_video(args.clip, models, num_frames=args.frames, threshold=args.threshold,
                           detector=FaceDetector(), sources=sources)
    data = write_explanation(result, models, args.explain, count=args.explain_faces) \
        if args.explain else result.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_summary(result)
              + (format_explanation(data["explanation"], args.explain) if args.explain else ""))
    return 0


def apply_runtimes(models: dict[str, FaceClassifier], sources: dict[str, str],
                   runtimes: list[str] | None, calibration: str | None = None,
                   tta: str = DEFAULT_TTA) -> tuple[dict[str, FaceClassifier], dict[str, str]]:
    """Each model behind the runtime `--runtime` names for it and the test-time augmentation
    `--tta` names; its source says which."""
    chosen = parse_runtimes(runtimes, models)
    crops = calibration_crops(calibration) if calibration and "onnx-int8" in chosen.values() \
        else None
    tags = {name: setting_tags(runtime, tta) for name, runtime in chosen.items()}
    return ({name: with_tta(accelerate(model, chosen[name], calibration=crops), tta)
             for name, model in models.items()},
            {name: source + (f" [{', '.join(tags[name])}]" if tags[name] else "")
             for name, source in sources.items()})


def setting_tags(runtime: str, tta: str) -> list[str]:
    """What a label says of how a model ran: its runtime and test-time augmentation, each only
    where it is not the default."""
    return ([runtime] if runtime != DEFAULT_RUNTIME else []) \
        + ([f"tta {tta}"] if tta != DEFAULT_TTA else [])


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


def calibration_crops(manifest: str | Path, *, count: int = CALIBRATION_CROPS):
    """`count` training crops spread evenly over a manifest's train split (real and fake)."""
    root, samples = read_samples(manifest)
    train = [sample for sample in samples if sample.split == "train"] or samples
    step = max(1, len(train) // count)
    return load_crops(root, train[::step][:count])


def parse_runtimes(values: list[str] | None, roles) -> dict[str, str]:
    """['onnx'] or ['teacher=jit', 'student=onnx'] -> {role: runtime} for every role."""
    chosen = {role: DEFAULT_RUNTIME for role in roles}
    for value in values or []:
        role, _, runtime = value.rpartition("=")
        if runtime not in RUNTIMES:
            raise DeepfakeKDError(f"--runtime {value}: unknown runtime {runtime!r}; choose one of "
                                  f"{', '.join(RUNTIMES)}")
        if role and role not in chosen:
            raise DeepfakeKDError(f"--runtime {value}: no model called {role!r}; "
                                  f"models: {', '.join(chosen)}")
        for name in ([role] if role else chosen):
            chosen[name] = runtime
    return chosen
