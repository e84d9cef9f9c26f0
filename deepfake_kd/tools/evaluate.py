"""`python -m deepfake_kd evaluate`: AUC / accuracy / F1 / log loss of both models on face
crops (clean and degraded: the robustness report) and on labelled clips, also re-encoded at
480p (`training.evaluate`); with `--baseline`, each model's AUC against another model's on the
same crops, with a paired-bootstrap interval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..models import load_model
from ..pipeline.runtime import RUNTIMES, accelerate
from ..pipeline.tta import TTAS, with_tta
from ..roles import DEFAULT_THRESHOLD, ROLES, add_reference_arguments, cli_reference
from ..training.data import DEGRADATIONS, load_split
from ..training.evaluate import (
    crop_report,
    evaluate_videos,
    format_metrics,
    format_paired,
    format_robustness,
    reencoded_folder,
)
from ..util import write_atomically
from .arguments import add_tta_argument

BASELINE = "baseline"  # the name of `--baseline` in the report


def run_evaluate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    def prepare(reference: str, tta: str):
        return with_tta(accelerate(load_model(reference), args.runtime), tta)

    models = {role: prepare(cli_reference(args, role), args.tta)
              for role in ROLES if role in args.roles}
    report: dict = {"references": {role: cli_reference(args, role) for role in models},
                    "runtime": args.runtime, "tta": args.tta}
    if args.manifest:
        crops, labels = load_split(args.manifest, args.split, cache_dir=args.cache_dir,
                                   limit=args.limit)
        scored = dict(models)
        pairs = [(BASELINE, role) for role in models] if args.baseline else []
        if args.baseline:
            report["baseline_tta"] = args.baseline_tta or args.tta
            scored[BASELINE] = prepare(args.baseline, report["baseline_tta"])
            report["references"][BASELINE] = args.baseline
        if len(models) == 2:
            pairs.append(("teacher", "student"))
        conditions = ("clean",) if args.no_robustness else ("clean", *DEGRADATIONS)
        by_model, paired = crop_report(scored, crops, labels, threshold=args.threshold,
                                       conditions=conditions, pairs=pairs)
        metrics = {name: by_condition["clean"] for name, by_condition in by_model.items()}
        report["crops"] = {"manifest": str(args.manifest), "split": args.split,
                           "metrics": metrics}
        if not args.no_robustness:
            report["robustness"] = by_model
        if paired:
            report["paired"] = paired
        print(format_metrics(f"face crops, split {args.split}:", metrics))
        if "robustness" in report:
            print(format_robustness(report["robustness"], threshold=args.threshold))
        if paired:
            print(format_paired(paired))
    if args.videos:
        folders = {"videos": (args.videos, "")}
        if not args.no_robustness:
            low = reencoded_folder(args.videos, Path(args.cache_dir) / "videos-480p")
            folders["videos_480p"] = (low, ", re-encoded at 480p")
        for key, (folder, note) in folders.items():
            report[key] = evaluate_videos(models, folder, num_frames=args.frames,
                                          threshold=args.threshold)
            for clip in report[key]["clips"]:
                print(f"{clip['file']}{note}: label {clip['label']}; " + ", ".join(
                    f"{name} {clip[name]['verdict']} ({clip[name]['video_prob']})"
                    for name in models))
            print(format_metrics(f"videos{note} (threshold {args.threshold}):",
                                 report[key]["metrics"]))
    if args.json:
        write_atomically(args.json, json.dumps(report, indent=1))
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="AUC / accuracy / F1 / log loss of both models")
    add_reference_arguments(parser)
    parser.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES),
                        help="the models to evaluate (default both; e.g. --roles student for a "
                             "new student without the teacher's 10 minutes on 2 cores)")
    parser.add_argument("--baseline", metavar="REF",
                        help="another model (a folder or Hub id) scored on the same crops: "
                             "each model's AUC minus its AUC, with a 95%% interval from a paired "
                             "bootstrap (a new teacher against the released one, a distilled "
                             "student against its no-teacher ablation)")
    parser.add_argument("--manifest", help="face crops: manifest CSV or real/ fake/ folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--videos", help="folder of clips with labels.csv (file,label)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--no-robustness", action="store_true",
                        help="skip the degraded copies of the crops (shrunk to 64 px, JPEG 35, "
                             "blur 1.2, all three) and of the clips (480p)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runtime", default="eager",
                        choices=[r for r in RUNTIMES if r != "onnx-int8"],
                        help="what runs the models: eager PyTorch (the default), or onnx (the "
                             "same probabilities to ~1e-5, the teacher 2-3x faster on a CPU)")
    add_tta_argument(parser, models="every model, the baseline included")
    parser.add_argument("--baseline-tta", choices=TTAS, default=None,
                        help="the baseline's test-time augmentation (default: --tta's), e.g. "
                             "--tta flip --baseline-tta none with the same weights as "
                             "--baseline: what flipping adds, with its interval")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.set_defaults(run=run_evaluate)
