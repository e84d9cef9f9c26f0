"""Requests to the served app, through gradio_client or as raw HTTP, and how each outcome is
judged against the clip's reference scores or its expected one-line error."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...roles import DEFAULT_THRESHOLD as THRESHOLD
from .clips import Case

SCORE_TOLERANCE = 1e-4  # the same server, the same crops, one thread: equal in practice
QUEUE_FULL = "Queue is full"  # gradio_client's QueueError; the browser: "...currently busy"


@dataclass
class Outcome:
    kind: str
    ok: bool
    seconds: float
    detail: str  # the error message, or what was wrong with the result
    scores: list = field(default_factory=list, repr=False)
    failed_frames: list = field(default_factory=list)
    queue_full: bool = False


def per_frame_scores(data: dict) -> tuple[list, list]:
    """(frame index, track, each model's p(fake)) per face, and the frames that did not decode:
    what must not depend on how many other requests were served at the same time."""
    faces = sorted((face["frame_index"], face["track_id"], *sorted(face["probs"].items()))
                   for face in data["faces"])
    frames = [(frame["index"], frame["num_faces"]) for frame in data["frames"]]
    return [frames, faces], list(data["failed_frames"])


def score_difference(a: list, b: list) -> str:
    """How two per-frame score lists differ ("" when equal to SCORE_TOLERANCE)."""
    (frames_a, faces_a), (frames_b, faces_b) = a, b
    if frames_a != frames_b:
        return f"frames/faces per frame {frames_a} vs {frames_b}"
    if [x[:2] for x in faces_a] != [y[:2] for y in faces_b]:
        return "faces in other frames or tracks"
    gaps = [abs(p - q) for x, y in zip(faces_a, faces_b)
            for (name, p), (other, q) in zip(x[2:], y[2:]) if name == other]
    if len(gaps) != sum(len(x) - 2 for x in faces_a):
        return "other models"
    worst = max(gaps, default=0.0)
    return f"p(fake) differs by up to {worst:.2g}" if worst > SCORE_TOLERANCE else ""


def error_text(exc: BaseException) -> str:
    response = getattr(exc, "response", None)  # httpx errors: the server's own words
    body = getattr(response, "text", "") if response is not None else ""
    return f"{type(exc).__name__}: {exc} {body}".strip()


def call_client(url: str, path: Path, frames: int, download: Path, timeout_s: float) -> tuple:
    """One analysis through gradio_client: (summary, result JSON)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=str(download))
    job = client.submit(handle_file(str(path)), frames, THRESHOLD, api_name="/analyze")
    outputs = job.result(timeout=timeout_s)
    return outputs[0], json.loads(Path(outputs[-1]).read_text())


def call_raw(url: str, path: Path | None, frames: int, timeout_s: float, *,
             upload_name: str = "", server_path: str = "") -> tuple:
    """One analysis as plain HTTP: upload `path` under any name (or name a server path
    without uploading), then /gradio_api/call/analyze; what a hand-made client can send."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        if path is not None:
            with open(path, "rb") as handle:
                answer = http.post("gradio_api/upload",
                                   files=[("files", (upload_name, handle, "video/mp4"))])
            answer.raise_for_status()
            server_path = answer.json()[0]
        file_data = {"path": server_path, "orig_name": upload_name or Path(server_path).name,
                     "meta": {"_type": "gradio.FileData"}}
        answer = http.post("gradio_api/call/analyze",
                           json={"data": [file_data, frames, THRESHOLD]})
        answer.raise_for_status()
        event = answer.json()["event_id"]
        kind, data = "", None
        with http.stream("GET", f"gradio_api/call/analyze/{event}") as stream:
            for line in stream.iter_lines():  # Gradio sends a heartbeat every 15 s
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer within {timeout_s:g} s")
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    data = json.loads(line.split(":", 1)[1].strip() or "null")
                    break
        if kind != "complete":
            raise RuntimeError(f"server error: {data}")
        result_url = data[-1]["url"]
        result = http.get(result_url if "://" in result_url else url + result_url.lstrip("/"))
        result.raise_for_status()
        return data[0], result.json(), server_path


def run_case(case: Case, url: str, clips: dict[str, Path], frames: int, download: Path,
             timeout_s: float, references: dict[str, tuple]) -> Outcome:
    start = time.monotonic()
    try:
        if case.raw == "path":  # a file outside the upload folder, named without uploading
            summary, data, _ = call_raw(url, None, frames, timeout_s, server_path=case.path)
        elif case.raw == "upload":
            summary, data, _ = call_raw(url, clips[case.clip or case.kind], frames, timeout_s,
                                        upload_name=case.upload_name)
        else:
            summary, data = call_client(url, clips[case.clip or case.kind], frames, download,
                                        timeout_s)
    except Exception as exc:  # noqa: BLE001 - every failure is judged below
        seconds, message = time.monotonic() - start, error_text(exc)
        queue_full = QUEUE_FULL in message
        ok = bool(case.expect) and case.expect in message
        detail = message if ok or queue_full else f"unexpected error: {message}"
        return Outcome(case.kind, ok, seconds, detail[:400], queue_full=queue_full)
    seconds = time.monotonic() - start
    if case.expect:
        return Outcome(case.kind, False, seconds, f"expected an error ({case.expect!r}), "
                       "got a result")
    scores, failed = per_frame_scores(data)
    problems = []
    if case.summary and case.summary not in summary:
        problems.append(f"summary lacks {case.summary!r}")
    reference = references.get(case.content)
    if reference is not None:
        difference = score_difference(scores, reference[0])
        if difference or failed != reference[1]:
            problems.append(f"per-frame scores differ from the clip analysed alone: "
                            f"{difference or 'other frames lost'}")
    if case.content == "damaged" and not failed:
        problems.append("no lost frames reported")
    return Outcome(case.kind, not problems, seconds, "; ".join(problems) or "result ok",
                   scores=scores, failed_frames=failed)


def fire(cases: list[Case], *, url: str, clips: dict[str, Path], frames: int, download: Path,
         timeout_s: float, references: dict, concurrency: int, together: bool = False
         ) -> list[Outcome]:
    """Every case from `concurrency` threads; `together`: all released at the same moment."""
    gate = threading.Barrier(len(cases)) if together else None

    def one(case: Case) -> Outcome:
        if gate is not None:
            gate.wait(timeout=60)
        return run_case(case, url, clips, frames, download, timeout_s, references)

    workers = len(cases) if together else concurrency
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = [pool.submit(one, case) for case in cases]
    # each call gives up after timeout_s, and each thread makes ceil(n / workers) of them
    deadline = time.monotonic() + timeout_s * -(-len(cases) // workers) + 60
    outcomes = []
    for case, future in zip(cases, futures):
        try:
            outcomes.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except Exception as exc:  # noqa: BLE001 - a hung call is a failure, not a hang
            outcomes.append(Outcome(case.kind, False, timeout_s,
                                    f"hung or crashed: {error_text(exc)}"))
    pool.shutdown(wait=False, cancel_futures=True)
    return outcomes


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")
