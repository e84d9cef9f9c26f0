"""Small helpers that several layers share: atomic file writes, environment flags, a digest of
a crop set, the C heap's policy for training, a map over forked processes. Nothing here imports
the rest of the package."""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar

import numpy as np

TRUE_WORDS = {"1", "true", "yes", "on"}
T = TypeVar("T")


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


def keep_freed_heap() -> bool:
    """Ask glibc's malloc to keep the memory a training step frees, for the next step, instead
    of handing it back to the system: no block served by mmap (glibc does that for blocks over
    32 MB and unmaps them on free), no trimming of the heap's top.

    Why: a teacher step at 224 px frees and re-allocates activations of tens of MB. On virtual
    machines that report free pages to their host (Firecracker's page_reporting, as on this
    project's training machines), every re-touched page then faults through the host: the
    teacher trained at 4.2 img/s, half the CPU in the kernel; with this call in `fit`, 11.5
    img/s (2 threads, 224 px, measured 2026-12-03; tcmalloc preloaded, which keeps memory too:
    14.7). For training processes only: a server should give memory back. Returns False, doing nothing,
    where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the system has one: a container's
    share, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_FORKED_JOB: Callable[[int], object] | None = None


def _run_forked(bounds: tuple[int, int]) -> list:
    assert _FORKED_JOB is not None, "fork_map's job is set before its workers fork"
    return [_FORKED_JOB(i) for i in range(*bounds)]


def fork_map(job: Callable[[int], T], n: int, *, workers: int | None = None,
             chunk: int = 32) -> list[T]:
    """[job(0), ..., job(n - 1)] computed by `workers` forked processes (default: every CPU this
    process may use), `chunk` items per task, in order. Why processes: per-crop work (decoding a
    JPEG, augmenting a 224 px view: 5 ms each) is numpy and OpenCV glue that holds the GIL about
    half the time, so 2 threads gave 1.4x and 16 would give little more. Forked workers inherit
    `job` and what it reads (a memory-mapped crop set) without pickling it; only indices go out
    and results come back. `job` must not touch torch's thread pools or a GPU (a fork does not
    copy their threads). Serial where only one worker would run, or where fork does not exist."""
    global _FORKED_JOB
    workers = workers or usable_cpus()
    workers = min(workers, -(-n // chunk))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [job(i) for i in range(n)]
    _FORKED_JOB = job
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_run_forked, [(start, min(start + chunk, n))
                                           for start in range(0, n, chunk)], chunksize=1)
    finally:
        _FORKED_JOB = None
    return [item for part in parts for item in part]
