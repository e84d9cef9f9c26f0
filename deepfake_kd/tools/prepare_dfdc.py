"""`python -m deepfake_kd prepare-dfdc`: face crops and a manifest from the DFDC training
videos (`training.prepare_dfdc`)."""

from __future__ import annotations

import argparse
import sys

from ..training.prepare_dfdc import prepare_dfdc
from .arguments import positive_int, probability


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare-dfdc", help="face crops and a manifest from the DFDC training videos",
        description="Read every metadata.json under DFDC_DIR, cut face crops from the videos "
                    "with the app's face pipeline, and write OUT_DIR/real/, OUT_DIR/fake/, "
                    "OUT_DIR/manifest.csv (file,label,source,split; split by source video) "
                    "and OUT_DIR/skipped.csv. Resumable: rerun to continue.")
    parser.add_argument("dfdc_dir", metavar="DFDC_DIR", help="folder with the DFDC parts")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where the crops go")
    parser.add_argument("--frames-per-video", type=positive_int, default=1, metavar="N",
                        help="frames sampled per video, one crop of the main face from each "
                             "(default 1, as the shared crops)")
    parser.add_argument("--val-fraction", type=probability, default=0.1, metavar="F",
                        help="share of source videos in the val split (default 0.1)")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="take only the first N listed videos (real video, then its fakes)")
    parser.add_argument("--fakes-per-source", type=positive_int, metavar="K",
                        help="keep K fakes of each real video (default all; 1 gives a balanced "
                             "set like the shared crops)")
    parser.add_argument("--retry-skipped", action="store_true",
                        help="process again the videos a previous run skipped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_prepare_cli)


def run_prepare_cli(args: argparse.Namespace) -> int:
    prepare_dfdc(args.dfdc_dir, args.out_dir, frames_per_video=args.frames_per_video,
                 val_fraction=args.val_fraction, limit=args.limit,
                 fakes_per_source=args.fakes_per_source, retry_skipped=args.retry_skipped,
                 progress=not args.no_progress,
                 log=lambda message: print(message, file=sys.stderr))
    return 0
