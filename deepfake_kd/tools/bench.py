"""`python -m deepfake_kd bench`: what each model costs, per face and on a whole clip.

Per face: every model gets the same random crops, preprocessed once (the model call alone is
timed, as `analyze` times it). After a warm-up the models run interleaved, one call each in turn
(A B A B ...), so a machine that slows down or speeds up part-way (another job, thermal limits)
affects all of them alike. Each model's median and spread are reported, and the paired ratio of
every model to the baseline (the first model, the teacher) is taken call by call, which cancels
most of that drift. FLOPs per face come from torch's own counter (`FlopCounterMode`: matrix
multiplications, convolutions and attention; element-wise work is not counted).

Heatmaps: each model's Grad-CAM heatmaps (`pipeline.explain`, what the app's "Where the models
look" and `analyze --explain` compute) of 8 random crops in one call, the models interleaved
the same way; median seconds per call.

End to end: the whole analysis of one clip (`analysis_steps`, the same code the CLI and the app
run), with the detector and models built beforehand as the app builds them, split into decoding,
face detection and each model, with the time to each model's answer (the smallest model answers
first, as the app shows it), the work done (frames decoded, searched by MTCNN, followed), and
the peak resident memory of the run. Without `--clip` a
10 s 1920x1080 clip of a moving face is made from the bundled public-domain photo.

Nothing here depends on which model is the teacher: models are a dict, the first is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import DeepfakeKDError
from ..models import FaceClassifier, load_model, predict_crops
from ..pipeline.analysis import OVERLAP_DECODING, analysis_steps, analyze_video
from ..pipeline.explain import GRADCAM_BATCH, explain_crops
from ..pipeline.faces import CROP_SIZE, FaceDetector
from ..pipeline.runtime import accelerate
from ..pipeline.tta import TTA_PASSES, with_tta
from ..pipeline.video import quiet_ffmpeg
from ..roles import add_model_arguments, load_cli_models
from ..serving.examples import FACE_CENTRE as PHOTO_FACE_CENTRE
from ..serving.examples import PHOTO
from ..training.data import load_split
from ..training.metrics import binary_metrics
from ..util import atomic_path, write_atomically
from .analyze import add_runtime_argument, apply_runtimes, parse_runtimes, setting_tags
from .arguments import positive_int

DEFAULT_BATCH_SIZES = (1, 32)


# --- per-face latency -------------------------------------------------------------------------

def flops_per_face(model: FaceClassifier) -> int:
    """FLOPs of one face's answer (torch's counter: matmul, conv, attention): one forward pass
    per test-time view."""
    passes = TTA_PASSES[model.tta]
    model = model.unwrap()  # an accelerated model: count its torch model
    x = torch.zeros(1, 3, model.input_size, model.input_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return passes * int(counter.get_total_flops())


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, 10th/90th percentile and minimum, in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()),
            "repeats": int(len(ms))}


def measure_latency(models: Mapping[str, FaceClassifier], *, batch_size: int, repeats: int,
                    warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each model on the same `batch_size` crops, calls interleaved."""
    crops = np.random.default_rng(seed).integers(
        0, 256, (batch_size, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        inputs = {name: model.preprocess(crops) for name, model in models.items()}
        for _ in range(warmup):
            for name, model in models.items():
                model.predict_proba(inputs[name])
        for _ in range(repeats):
            for name, model in models.items():
                tic = time.perf_counter()
                model.predict_proba(inputs[name])
                times[name].append(time.perf_counter() - tic)
    return times


def measure_explanations(models: Mapping[str, FaceClassifier], *, faces: int = GRADCAM_BATCH,
                         repeats: int, warmup: int = 1, seed: int = 0) -> dict:
    """Seconds per call of `explain_crops` on the same `faces` crops, models interleaved (one
    model's backward pass at a time, as the app runs them); the figures of `summary`."""
    crops = np.random.default_rng(seed).integers(
        0, 256, (faces, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {name: [] for name in models}
    for k in range(warmup + repeats):
        for name, model in models.items():
            tic = time.perf_counter()
            explain_crops(model, crops)
            if k >= warmup:
                times[name].append(time.perf_counter() - tic)
    return {"faces": faces, **{name: summary(t) for name, t in times.items()}}


def latency_report(models: Mapping[str, FaceClassifier], flops: Mapping[str, int], *,
                   batch_sizes, repeats: int, warmup: int) -> tuple[dict, dict]:
    """(latency per batch size and model, paired ratios to the baseline per batch size)."""
    baseline = next(iter(models))
    latency, ratios = {}, {}
    for batch_size in batch_sizes:
        times = measure_latency(models, batch_size=batch_size, repeats=repeats, warmup=warmup)
        latency[str(batch_size)] = {
            name: {**summary(t),
                   "per_face_ms": 1000 * statistics.median(t) / batch_size,
                   "gflops_per_s": flops[name] * batch_size / statistics.median(t) / 1e9}
            for name, t in times.items()}
        ratios[str(batch_size)] = {
            name: np.asarray(t) / np.asarray(times[baseline])
            for name, t in times.items() if name != baseline}
    return latency, ratios


def comparison(models: Mapping[str, FaceClassifier], params: Mapping[str, int],
               flops: Mapping[str, int], latency: dict, ratios: dict) -> dict:
    """Every model against the baseline: ratios and % reductions."""
    baseline = next(iter(models))

    def reduction(ratio: float) -> float:
        return 100 * (1 - ratio)

    out = {"baseline": baseline}
    for name in models:
        if name == baseline:
            continue
        entry = {"parameters_ratio": params[name] / params[baseline],
                 "flops_ratio": flops[name] / flops[baseline], "latency": {}}
        entry["parameters_reduction_pct"] = reduction(entry["parameters_ratio"])
        entry["flops_reduction_pct"] = reduction(entry["flops_ratio"])
        for batch, per_model in latency.items():
            ratio = per_model[name]["median_ms"] / per_model[baseline]["median_ms"]
            paired = ratios[batch][name]
            entry["latency"][batch] = {
                "ratio": ratio, "reduction_pct": reduction(ratio),
                "paired_ratio_median": float(np.median(paired)),
                "paired_ratio_p10": float(np.percentile(paired, 10)),
                "paired_ratio_p90": float(np.percentile(paired, 90))}
        out[name] = entry
    return out


# --- end to end on a clip -----------------------------------------------------------------------

def make_bench_clip(path: str | Path, *, size: tuple[int, int] = (1920, 1080),
                    seconds: float = 10.0, fps: float = 30.0) -> Path:
    """A clip of the public-domain photo's face gliding across a grey frame (MPEG-4 Part 2,
    the codec OpenCV's wheels can write). Written to a temporary name, then renamed."""
    path = Path(path)
    photo = cv2.imread(str(PHOTO))
    if photo is None:
        raise DeepfakeKDError(f"{PHOTO}: missing; pass --clip PATH to benchmark a clip of yours")
    width, height = size
    count = max(1, round(seconds * fps))
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not writer.isOpened():
            raise DeepfakeKDError(f"{tmp}: OpenCV cannot write an mp4v clip here; "
                                  "pass --clip PATH")
        try:
            for k in range(count):
                t = k / max(count - 1, 1)
                scale = height / 540 * (0.9 + 0.2 * t)  # a face of ~0.17 of the height, growing
                centre = (width * (0.3 + 0.4 * t), height * (0.4 + 0.1 * np.sin(2 * np.pi * t)))
                shift = np.float32([[scale, 0, centre[0] - PHOTO_FACE_CENTRE[0] * scale],
                                    [0, scale, centre[1] - PHOTO_FACE_CENTRE[1] * scale]])
                writer.write(cv2.warpAffine(photo, shift, size, flags=cv2.INTER_LINEAR,
                                            borderValue=(128, 128, 128)))
        finally:
            writer.release()
    return path


def default_clip() -> Path:
    """The 10 s 1080p clip, made once per machine in the temp folder and reused."""
    path = Path(tempfile.gettempdir()) / "deepfake-kd-bench-1080p-10s-v1.mp4"
    if not path.is_file():
        print(f"making the benchmark clip {path} (once) ...", file=sys.stderr)
        make_bench_clip(path)
    return path


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start (or since `reset_peak_rss`), in MiB."""
    peak = proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource  # Unix only; imported here so the CLI still loads elsewhere

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024 * 1024 if sys.platform == "darwin" else 1024)


def rss_mb() -> float:
    rss = proc_status_mb("VmRSS")
    return float("nan") if rss is None else rss


def measure_clip(models: Mapping[str, FaceClassifier], clip: str | Path, *, frames: int,
                 repeats: int, overlap: bool = OVERLAP_DECODING) -> dict:
    """Median stage times over `repeats` full analyses of `clip`, after a short warm-up."""
    detector = FaceDetector()  # built once, outside the timing, as the app and CLI do
    analyze_video(clip, models, num_frames=min(2, frames), detector=detector,
                  overlap=overlap)  # lazy initialisation
    rss_before, peak_before = rss_mb(), peak_rss_mb()
    peak_reset = reset_peak_rss()
    runs = []
    for _ in range(repeats):
        answers = {}  # model -> seconds from the start to its answer, in the order they came
        tic = time.perf_counter()
        for result in analysis_steps(clip, models, num_frames=frames, detector=detector,
                                     overlap=overlap):
            answers.update({name: time.perf_counter() - tic
                            for name in result.models if name not in answers})
        total = time.perf_counter() - tic
        timings = {key: ms / 1000 for key, ms in result.timings_ms.items()}
        stages = {"decoding": timings["sampling"], "detection": timings["detection"]}
        both = timings.get("frames_and_faces", stages["decoding"] + stages["detection"])
        for name, model_result in result.models.items():
            stages[f"model:{name}"] = model_result.inference_ms / 1000
        saved = stages["decoding"] + stages["detection"] - both  # decoded while detecting
        stages["other"] = total - (sum(stages.values()) - saved)  # preprocessing, ...
        runs.append({"stages_s": stages, "overlap_s": saved, "total_s": total,
                     "answers_s": answers})
    median = {stage: statistics.median(run["stages_s"][stage] for run in runs)
              for stage in runs[0]["stages_s"]}
    total = statistics.median(run["total_s"] for run in runs)
    return {
        "path": str(clip), "width": result.width, "height": result.height,
        "duration_s": result.duration, "fps": result.fps, "frames": len(result.frames),
        "faces": len(result.faces),
        "frames_with_faces": sum(f.num_faces > 0 for f in result.frames),
        "repeats": repeats, "overlap": overlap, "stages_s": median,
        "overlap_s": statistics.median(run["overlap_s"] for run in runs), "total_s": total,
        "answers_s": {name: statistics.median(run["answers_s"][name] for run in runs)
                      for name in runs[0]["answers_s"]},
        "work": result.work,
        "frames_per_s": len(result.frames) / total,
        "runs": runs, "rss_before_mb": rss_before, "process_peak_before_mb": peak_before,
        "peak_rss_mb": peak_rss_mb() if peak_reset else None}


# --- the whole benchmark --------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads(),
            "torch": torch.__version__, "opencv": cv2.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_bench(models: Mapping[str, FaceClassifier], *, sources: Mapping[str, str] | None = None,
              batch_sizes=DEFAULT_BATCH_SIZES, repeats: int = 30, warmup: int = 3,
              clip: str | Path | None = None, frames: int = 32, clip_repeats: int = 3,
              overlap: bool = OVERLAP_DECODING, explain_repeats: int = 3,
              candidates: Mapping[str, FaceClassifier] | None = None) -> dict:
    """The full benchmark as plain JSON-ready data (`clip=None` makes the default clip;
    `clip_repeats=0` skips the end-to-end part, `explain_repeats=0` the heatmaps).
    `candidates` (e.g. students of other input sizes) join the per-face measurement only,
    interleaved with `models` and compared with the same baseline."""
    if len(models) < 1:
        raise DeepfakeKDError("nothing to benchmark: no models")
    served = models
    models = {**models, **(candidates or {})}
    for model in models.values():
        model.eval()
    report: dict = {"machine": machine_info(),
                    "settings": {"batch_sizes": list(batch_sizes), "repeats": repeats,
                                 "warmup": warmup, "frames": frames,
                                 "clip_repeats": clip_repeats,
                                 "explain_repeats": explain_repeats}}
    params = {name: model.num_parameters() for name, model in models.items()}
    flops = {name: flops_per_face(model) for name, model in models.items()}
    report["models"] = {
        name: {"source": (sources or {}).get(name, "in memory"),
               "architecture": type(model.unwrap()).__name__,
               "runtime": model.runtime, "tta": model.tta, "input_size": model.input_size,
               "parameters": params[name], "flops_per_face": flops[name],
               "candidate": name not in served}
        for name, model in models.items()}
    latency, ratios = latency_report(models, flops, batch_sizes=batch_sizes, repeats=repeats,
                                     warmup=warmup)
    report["latency"] = latency
    report["comparison"] = comparison(models, params, flops, latency, ratios)
    if explain_repeats > 0:
        report["explanation"] = measure_explanations(served, repeats=explain_repeats)
    if clip_repeats > 0:
        report["clip"] = measure_clip(served, clip or default_clip(), frames=frames,
                                      repeats=clip_repeats, overlap=overlap)
    clip_peak = report.get("clip", {}).get("peak_rss_mb")
    report["peak_rss_mb"] = max(peak_rss_mb(), clip_peak or 0.0,
                                report.get("clip", {}).get("process_peak_before_mb", 0.0))
    report["machine"]["load_average_end"] = list(os.getloadavg()) \
        if hasattr(os, "getloadavg") else None
    return report


def runtime_auc(eager: Mapping[str, FaceClassifier], models: Mapping[str, FaceClassifier],
                manifest: str, *, split: str, cache_dir: str = "cache") -> dict:
    """For each model not run eagerly: its AUC on a split's face crops in its runtime and in
    eager (with the same test-time augmentation), and the largest probability difference
    between the two."""
    crops, labels = load_split(manifest, split, cache_dir=cache_dir)
    out = {"manifest": str(manifest), "split": split, "crops": int(len(labels))}
    for name, model in models.items():
        if model.runtime == "eager":  # --runtime eager
            continue
        probs = predict_crops(model, crops)
        reference = predict_crops(with_tta(eager[name], model.tta), crops)
        entry = {"runtime": model.runtime, "tta": model.tta,
                 "auc": binary_metrics(labels, probs)["auc"],
                 "eager_auc": binary_metrics(labels, reference)["auc"],
                 "max_abs_prob_difference": float(np.abs(probs - reference).max())}
        entry["auc_difference"] = entry["auc"] - entry["eager_auc"]
        out[name] = entry
    return out


def format_report(report: dict) -> str:
    m = report["machine"]
    models = report["models"]
    lines = [
        f"{m['cpu']}, {m['cpu_count']} CPUs; torch {m['torch']} with {m['torch_threads']} "
        f"thread(s); load average {m['load_average_start'][0]:.1f} at start, "
        f"{m['load_average_end'][0]:.1f} at end" if m.get("load_average_start") else
        f"{m['cpu']}, {m['cpu_count']} CPUs; torch {m['torch']} with {m['torch_threads']} "
        "thread(s)",
        "",
        f"{'model':<20} {'params':>11} {'GFLOP/face':>10}  "
        + "  ".join(f"{'batch ' + b + ': ms/face (p10-p90)':>30} {'GFLOP/s':>7}"
                    for b in report["latency"]),
    ]
    for name, info in models.items():
        cells = []
        for per_model in report["latency"].values():
            lat = per_model[name]
            batch = lat["median_ms"] / lat["per_face_ms"]
            cells.append(f"{lat['per_face_ms']:>12.3f} ({lat['p10_ms'] / batch:.3f}-"
                         f"{lat['p90_ms'] / batch:.3f})".rjust(30)
                         + f" {lat['gflops_per_s']:>7.1f}")
        tags = setting_tags(info["runtime"], info.get("tta", "none"))  # older reports: none
        label = f"{name} [{', '.join(tags)}]" if tags else name
        lines.append(f"{label:<20} {info['parameters']:>11,} "
                     f"{info['flops_per_face'] / 1e9:>10.3f}  " + "  ".join(cells))
    comp = report["comparison"]
    base = comp["baseline"]
    for name, c in comp.items():
        if name == "baseline":
            continue
        lines += ["", f"{name} vs {base}: parameters -{c['parameters_reduction_pct']:.2f}% "
                      f"({models[name]['parameters']:,} vs {models[base]['parameters']:,}), "
                      f"FLOPs -{c['flops_reduction_pct']:.2f}%"]
        for batch, lat in c["latency"].items():
            lines.append(f"  batch {batch}: time x{lat['ratio']:.4f} = -{lat['reduction_pct']:.2f}%"
                         f" (paired per call: median x{lat['paired_ratio_median']:.4f}, "
                         f"p10-p90 x{lat['paired_ratio_p10']:.4f}-{lat['paired_ratio_p90']:.4f})")
    explanation = report.get("explanation")
    if explanation:
        lines += ["", f"heatmaps (Grad-CAM) of {explanation['faces']} faces, one call: "
                      + ", ".join(f"{name} {explanation[name]['median_ms'] / 1000:.3f} s "
                                  f"(p10-p90 {explanation[name]['p10_ms'] / 1000:.3f}-"
                                  f"{explanation[name]['p90_ms'] / 1000:.3f})" for name in models)]
    auc = report.get("auc")
    if auc:
        lines += ["", f"AUC on {auc['crops']} {auc['split']} crops of {auc['manifest']}:"]
        for name, entry in auc.items():
            if isinstance(entry, dict):
                lines.append(
                    f"  {name} [{entry['runtime']}] {entry['auc']:.4f}; eager "
                    f"{entry['eager_auc']:.4f} (difference {entry['auc_difference']:+.4f}, "
                    f"largest |p difference| {entry['max_abs_prob_difference']:.1e})")
    clip = report.get("clip")
    if clip:
        stages = clip["stages_s"]
        lines += ["", f"clip {clip['path']}: {clip['width']}x{clip['height']}, "
                      f"{clip['duration_s']:.1f} s; {clip['frames']} frames sampled, "
                      f"{clip['faces']} faces; median of {clip['repeats']} run(s)"]
        lines.append("  " + " | ".join(f"{stage.removeprefix('model:')} {seconds:.3f} s"
                                       for stage, seconds in stages.items())
                     + (f" | decoding and detection overlapped {clip['overlap_s']:.3f} s"
                        if clip["overlap"] else ""))
        peak = "n/a" if clip["peak_rss_mb"] is None else f"{clip['peak_rss_mb']:.0f} MiB"
        lines.append("  answers: " + ", ".join(f"{name} at {seconds:.2f} s" for name, seconds
                                               in clip["answers_s"].items())
                     + f" | total {clip['total_s']:.2f} s, {clip['frames_per_s']:.1f} frames/s; "
                     f"peak RSS {peak} (before: {clip['rss_before_mb']:.0f} MiB)")
        work = clip["work"]
        lines.append(f"  work: {work['frames_decoded']} frames decoded for {clip['frames']} "
                     f"sampled; MTCNN searched {work['frames_searched']}, followed faces "
                     f"through {work['frames_followed']}")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """The figures as a Markdown table, for the README's Performance section and model cards."""
    m, models, comp = report["machine"], report["models"], report["comparison"]
    names = list(models)
    lines = [f"| | {' | '.join(names)} |", "|---|" + "---|" * len(names)]

    def row(label, cells):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("runtime", [models[n]["runtime"] + (f", tta {models[n]['tta']}"
                                             if models[n].get("tta", "none") != "none" else "")
                    for n in names])  # a table is read without the defaults at hand
    row("parameters", [f"{models[n]['parameters']:,}" for n in names])
    row("GFLOP per face", [f"{models[n]['flops_per_face'] / 1e9:.3f}" for n in names])
    for batch, per_model in report["latency"].items():
        row(f"ms per face, batch {batch} (median; p10-p90)",
            [f"{per_model[n]['per_face_ms']:.3f} ({per_model[n]['p10_ms'] / int(batch):.3f}-"
             f"{per_model[n]['p90_ms'] / int(batch):.3f})" for n in names])
        row(f"GFLOP/s, batch {batch}", [f"{per_model[n]['gflops_per_s']:.1f}" for n in names])
    explanation = report.get("explanation")
    if explanation:
        row(f"s for the heatmaps of {explanation['faces']} faces (median)",
            [f"{explanation[n]['median_ms'] / 1000:.3f}" for n in names])
    base = comp["baseline"]
    for name in names:
        if name == base:
            continue
        c = comp[name]
        lines += ["", f"{name} vs {base}: {c['parameters_reduction_pct']:.2f}% fewer parameters, "
                      f"{c['flops_reduction_pct']:.2f}% fewer FLOPs; time per face "
                      + ", ".join(f"{100 * lat['ratio']:.2f}% of the {base}'s at batch {batch} "
                                  f"({lat['reduction_pct']:.2f}% less)"
                                  for batch, lat in c["latency"].items()) + "."]
    clip = report.get("clip")
    if clip:
        stages = ", ".join(f"{stage.removeprefix('model:')} {seconds:.2f} s"
                           for stage, seconds in clip["stages_s"].items())
        peak = "" if clip["peak_rss_mb"] is None else \
            f", peak resident memory {clip['peak_rss_mb'] / 1024:.1f} GiB"
        lines += ["", f"End to end on a {clip['width']}x{clip['height']}, "
                      f"{clip['duration_s']:.0f} s clip, {clip['frames']} frames, all models: "
                      f"{clip['total_s']:.2f} s "
                      f"(median of {clip['repeats']}; {stages}; "
                      + ", ".join(f"{name}'s answer at {seconds:.2f} s"
                                  for name, seconds in clip["answers_s"].items())
                      + (f"; decoding overlapped detection by {clip['overlap_s']:.2f} s"
                         if clip["overlap"] else "") + f"){peak}."]
    lines += ["", f"Measured by `python -m deepfake_kd bench` on {m['cpu']} ({m['cpu_count']} "
                  f"CPUs, {m['torch_threads']} torch thread(s), torch {m['torch']})."]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------

def batch_sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,32, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="per-face latency, FLOPs and parameters of both models, and a whole clip",
        description=__doc__.split("\n\n")[0] + " Prints a table; --json also writes the data.")
    add_model_arguments(parser, untrained_help="latency does not depend on weight values")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch threads (default: torch's own choice, reported)")
    parser.add_argument("--repeats", type=positive_int, default=30, metavar="N",
                        help="timed calls per model and batch size (default 30)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N",
                        help="untimed calls per model first (default 3)")
    parser.add_argument("--batch-sizes", type=batch_sizes_arg, default=list(DEFAULT_BATCH_SIZES),
                        metavar="B,B", help="default 1,32")
    parser.add_argument("--clip", metavar="PATH",
                        help="clip for the end-to-end run (default: a 10 s 1080p clip made from "
                             "the bundled photo)")
    parser.add_argument("--frames", type=positive_int, default=32, metavar="N",
                        help="frames sampled from the clip (default 32)")
    parser.add_argument("--clip-repeats", type=int, default=3, metavar="N",
                        help="end-to-end runs, median reported (default 3; 0 skips the clip)")
    parser.add_argument("--explain-repeats", type=int, default=3, metavar="N",
                        help="timed heatmap calls (8 faces) per model, median reported "
                             "(default 3; 0 skips them)")
    parser.add_argument("--sequential", action="store_true",
                        help="decode every sampled frame before detecting faces, instead of "
                             "detecting while later frames decode (the default), to measure "
                             "what the overlap saves")
    add_runtime_argument(parser)
    parser.add_argument("--candidate", action="append", metavar="NAME=REF",
                        help="another model (a folder or Hub id) timed per face beside the "
                             "others, in the student's runtime (repeatable): e.g. students of "
                             "other input sizes")
    parser.add_argument("--auc-manifest", metavar="MANIFEST",
                        help="also score the face crops of this manifest's --auc-split with "
                             "each model, in its runtime and in eager: AUC of both, "
                             "largest probability difference")
    parser.add_argument("--auc-split", default="val", help="default val")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    parser.add_argument("--markdown", metavar="OUT",
                        help="also write them as a Markdown table (README, model cards)")
    parser.set_defaults(run=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    quiet_ffmpeg()
    if args.threads:
        torch.set_num_threads(args.threads)
    eager, sources = load_cli_models(args)
    models, sources = apply_runtimes(eager, sources, args.runtime, args.calibration, args.tta)
    candidates = {}
    for value in args.candidate or []:
        name, _, reference = value.partition("=")
        if not name or not reference or name in models:
            raise DeepfakeKDError(f"--candidate {value}: give NAME=REF, with a NAME other than "
                                  f"{', '.join(models)}")
        runtime = parse_runtimes(args.runtime, ["student"])["student"]
        candidates[name] = with_tta(accelerate(load_model(reference), runtime), args.tta)
        sources[name] = reference
    report = run_bench(models, sources=sources, batch_sizes=args.batch_sizes,
                       repeats=args.repeats, warmup=max(args.warmup, 0), clip=args.clip,
                       frames=args.frames, clip_repeats=max(args.clip_repeats, 0),
                       overlap=not args.sequential, explain_repeats=max(args.explain_repeats, 0),
                       candidates=candidates)
    if args.auc_manifest:
        report["auc"] = runtime_auc(eager, models, args.auc_manifest, split=args.auc_split)
    print(format_report(report))
    if args.json:
        write_atomically(args.json, json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if args.markdown:
        write_atomically(args.markdown, format_markdown(report) + "\n")
        print(f"wrote {args.markdown}")
    return 0
