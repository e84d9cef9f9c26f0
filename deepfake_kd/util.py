"""Small helpers that several layers share: atomic file writes, environment flags, a digest of
a crop set. Nothing here imports the rest of the package."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

TRUE_WORDS = {"1", "true", "yes", "on"}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers that choose a format by the
    suffix still do) that replaces `path` once the block ends without an error; on an error
    it is removed. A reader never sees half a file, and concurrent writers never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return Path(path)


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """True when the variable says 1, true, yes or on (any case)."""
    environ = os.environ if environ is None else environ
    return environ.get(name, "").strip().lower() in TRUE_WORDS


def crop_sample_bytes(crops: np.ndarray, *, samples: int = 64) -> bytes:
    """About `samples` crops spread over a crop set, as bytes: what cache keys hash (a full
    hash of 21,600 crops would cost seconds on every run)."""
    return np.ascontiguousarray(crops[:: max(1, len(crops) // samples)]).tobytes()


def crops_digest(crops: np.ndarray) -> str:
    """A short key for a crop set: its shape and `crop_sample_bytes`."""
    digest = hashlib.sha1(str(crops.shape).encode())
    digest.update(crop_sample_bytes(crops))
    return digest.hexdigest()[:16]
