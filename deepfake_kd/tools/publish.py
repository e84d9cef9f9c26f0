"""Releasing models: `export` a trained checkpoint into weights/ (fp16 shards under 50 MB where
asked), and `push` a model folder (config.json, safetensors, model card) to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import HfApi

from ..models import load_model, save_model
from ..models.weights import HUB_FILES


def files_to_upload(folder: str | Path) -> list[Path]:
    """The files a push sends, after checking the folder loads as a model (so a broken or pickled
    folder is never published)."""
    folder = Path(folder)
    load_model(str(folder))  # raises a WeightsError naming the problem
    return sorted(p for pattern in HUB_FILES for p in folder.glob(pattern) if p.is_file())


def push(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
         message: str = "Upload deepfake-kd model", api: HfApi | None = None) -> str:
    files = files_to_upload(folder)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               allow_patterns=[p.name for p in files], commit_message=message)
    return str(commit)


def run_push(args: argparse.Namespace) -> int:
    files = files_to_upload(args.folder)
    for path in files:
        print(f"{path.stat().st_size / 1e6:9.2f} MB  {path.name}")
    total = sum(p.stat().st_size for p in files) / 1e6
    if args.dry_run:
        print(f"dry run: would upload {len(files)} files ({total:.1f} MB) to {args.repo_id}")
        return 0
    print(push(args.folder, args.repo_id, private=args.private))
    return 0


def export(source: str, folder: str | Path, *, half: bool = False) -> Path:
    """Re-save a trained model (e.g. runs/teacher/best) as a release folder. fp16 halves the size;
    loading casts back to fp32, so inference is unchanged but for fp16 rounding."""
    model = load_model(source)
    return save_model(model.half() if half else model, folder)


def run_export(args: argparse.Namespace) -> int:
    folder = export(args.source, args.folder, half=args.fp16)
    for path in sorted(folder.glob("*")):
        print(f"{path.stat().st_size / 1e6:9.2f} MB  {path}")
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("export", help="re-save a trained model as a release folder")
    parser.add_argument("source", help="a trained model folder or Hub id, e.g. runs/teacher/best")
    parser.add_argument("folder", help="release folder, e.g. weights/teacher")
    parser.add_argument("--fp16", action="store_true", help="store weights in float16")
    parser.set_defaults(run=run_export)

    parser = subparsers.add_parser("push", help="publish a model folder to the Hugging Face Hub")
    parser.add_argument("folder", help="a folder written by save_pretrained, e.g. weights/student")
    parser.add_argument("repo_id", help="owner/name on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    parser.set_defaults(run=run_push)
