"""Load and fault test of the served app: many users at once, broken uploads and hostile files.

`python -m deepfake_kd loadtest` starts `app.py` itself, in a subprocess on 127.0.0.1 with a
free port and a temporary folder of its own (TMPDIR, so Gradio's cache, the uploads, the result
files and the example clips all land under one folder it can inspect), and then:

1. generates its clips from tests/data/astronaut.png: valid ones of several sizes, orientations
   and codecs (one too large to decode whole within the memory bound), one that stops decoding
   half-way, one without a face; and bad ones: corrupt, not a video, an image, too long, and one
   over the upload limit (the server is started with a small upload limit, so the file is small);
2. analyses each valid clip alone, one after the other: the reference per-frame scores;
3. fires all requests from concurrent threads through `gradio_client`, and as raw HTTP what it
   would not send (the over-size file, which it refuses itself; an upload name that a local
   file cannot carry; a server path never uploaded; a link): every valid one must return the
   reference scores (to float tolerance), every bad one its one-line message, in time;
4. checks the server's peak RSS (VmHWM) against the bound, and the files left in its temporary
   folder once their lifetime has passed and again after it stops (none may be left but the
   example clips, which are kept on purpose);
5. starts a second server with a tiny queue and sends more requests at once than it holds: the
   extra ones must be refused with Gradio's "queue is full" answer (the browser's "This
   application is currently busy"), the others served, and the server must answer afterwards;
6. checks that nothing named by a hostile upload name was created anywhere.

Everything is bounded: requests by `--requests`, each by `--timeout-s`, server start-ups by
`Config.start_timeout_s`; the servers are stopped (SIGINT, then killed) whatever happens; the
working folder is removed unless the test failed (or `--keep`). The report
gives requests, failures (unexpected ones must be 0), latency p50/p95, peak RSS and files left.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from .examples import load_photo, place

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
MB = 1024 * 1024
THRESHOLD = 0.55
SCORE_TOLERANCE = 1e-4  # the same server, the same crops, one thread: equal in practice
QUEUE_FULL = "Queue is full"  # gradio_client's QueueError; the browser: "...currently busy"
# Names a shell or a path join would act on; each is uploaded as the name of a valid clip.
HOSTILE_NAMES = {
    "name-shell": "$(touch pwned).mp4",
    "name-semicolon": "; rm -rf x.mp4",
    "name-unicode": "ünïcødé 顔 🎭 'quote\" `tick`.mp4",
    "name-traversal": "../../etc/passwd.mp4",  # not a local file name: sent as raw HTTP
}
MARKERS = ("pwned", "passwd.mp4")  # what those names would create if obeyed
REFUSED_OUTSIDE = f"Cannot move {REPO / 'README.md'} to the gradio cache dir"  # Gradio's log


# --- clips ----------------------------------------------------------------------------------

def face_frames(size: tuple[int, int], count: int, *, scale: float) -> Iterator[np.ndarray]:
    """`count` frames of `size` (width, height): the photo's face drifting across grey; made
    one at a time, so a long 1080p clip never sits in memory whole."""
    photo, (width, height) = load_photo(), size
    for k in range(count):
        t = k / max(count - 1, 1)
        canvas = np.full((height, width, 3), 128, dtype=np.uint8)
        centre = (width * (0.35 + 0.3 * t), height * (0.45 + 0.1 * t))
        yield place(canvas, photo, centre=centre, scale=scale * (1 + 0.1 * t))


def no_face_frames(size: tuple[int, int], count: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(0)
    for k in range(count):
        yield (np.full((size[1], size[0], 3), 90, np.uint8) if k % 2 else
               rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_clip(path: Path, frames: Iterable[np.ndarray], *, fps: float, fourcc: str) -> Path:
    writer = None
    try:
        for frame in frames:
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps,
                                         (width, height))
                if not writer.isOpened():
                    raise RuntimeError(f"cannot write {path} with {fourcc}")
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()
    return path


def make_clips(folder: Path, *, upload_limit_mb: float, max_duration_s: float,
               large: bool) -> dict[str, Path]:
    """Every file the requests upload, by kind. `large` adds a 1920x1080 clip of 300 frames
    (10 s at 30 fps, as the DFDC clips), which decoded whole would take 1.9 GB: more than the
    memory bound allows."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {
        "landscape": write_clip(folder / "landscape.mp4", face_frames((640, 360), 24, scale=0.9),
                                fps=10, fourcc="mp4v"),
        "portrait": write_clip(folder / "portrait.mp4", face_frames((360, 640), 20, scale=0.9),
                               fps=25, fourcc="mp4v"),
        "small-webm": write_clip(folder / "small.webm", face_frames((320, 240), 16, scale=0.6),
                                 fps=8, fourcc="VP80"),
        "no-face": write_clip(folder / "no_face.mp4", no_face_frames((320, 240), 10),
                              fps=10, fourcc="mp4v"),
    }
    whole = write_clip(folder / "whole.avi", face_frames((480, 360), 16, scale=0.8), fps=10,
                       fourcc="MJPG")
    clips["damaged"] = folder / "damaged.avi"  # frames stop decoding 60% of the way in
    clips["damaged"].write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.6)])
    whole.unlink()
    if large:
        clips["large"] = write_clip(folder / "large.mp4", face_frames((1920, 1080), 300,
                                                                      scale=2.5),
                                    fps=30, fourcc="mp4v")
    data = clips["landscape"].read_bytes()
    clips["corrupt"] = folder / "corrupt.mp4"
    clips["corrupt"].write_bytes(data[:len(data) // 3])
    clips["not-video"] = folder / "notes.mp4"
    clips["not-video"].write_text("this is not a video\n" * 200)
    clips["image"] = folder / "photo.mp4"
    shutil.copy(REPO / "tests" / "data" / "astronaut.png", clips["image"])
    long_frames = no_face_frames((64, 48), int(max_duration_s) + 2)
    clips["too-long"] = write_clip(folder / "too_long.mp4", long_frames, fps=1, fourcc="mp4v")
    clips["over-size"] = folder / "over_size.mp4"  # random bytes, just over the upload limit
    size = int((upload_limit_mb + 0.5) * MB)
    clips["over-size"].write_bytes(np.random.default_rng(0).bytes(size))
    for key, name in HOSTILE_NAMES.items():
        if "/" not in name:
            hostile = folder / "hostile" / key
            hostile.mkdir(parents=True, exist_ok=True)
            clips[key] = hostile / name
            shutil.copy(clips["small-webm"], clips[key])
    return clips


@dataclass
class Case:
    """One kind of request: which file, sent how, and what must come back."""

    kind: str
    content: str  # the clip whose reference scores a result must equal; "" for bad input
    expect: str = ""  # substring of the error message; "" for a result
    raw: str = ""  # "upload": raw HTTP, the file sent as `upload_name`; "path": no upload at all
    upload_name: str = ""
    summary: str = ""  # substring the page's summary must hold
    clip: str = ""  # which file is sent (default: the one made for `kind`)
    path: str = ""  # raw "path": what the request names as the clip's path


CASES = {
    "landscape": Case("landscape", "landscape"),
    "not-video": Case("not-video", "", expect="not a readable video"),
    "name-shell": Case("name-shell", "small-webm"),
    "portrait": Case("portrait", "portrait"),
    # raw: gradio_client would refuse it itself; the server must, whatever the client does
    "over-size": Case("over-size", "", raw="upload", upload_name="over_size.mp4",
                      expect="File size exceeded maximum allowed size"),
    "damaged": Case("damaged", "damaged", summary="could not be decoded"),
    "corrupt": Case("corrupt", "", expect="corrupt/truncated"),
    "no-face": Case("no-face", "no-face", summary="No face was found"),
    "name-traversal": Case("name-traversal", "small-webm", raw="upload", clip="small-webm",
                           upload_name=HOSTILE_NAMES["name-traversal"]),
    "too-long": Case("too-long", "", expect="s long; the limit is"),
    "small-webm": Case("small-webm", "small-webm"),
    "name-unicode": Case("name-unicode", "small-webm"),
    # a path on the server named without uploading: Gradio refuses it before the handler runs
    # and tells the client no more than that the call failed (its reason goes to the log)
    "path-outside": Case("path-outside", "", raw="path", path=str(REPO / "README.md"),
                         expect="server error"),
    # a link as the clip's path: Gradio would download it before any check (app: refuse_links)
    "link": Case("link", "", raw="path", path="https://example.com/clip.mp4",
                 expect="does not fetch links"),
    "name-semicolon": Case("name-semicolon", "small-webm"),
    "image": Case("image", "", expect="image, not a video"),
    "large": Case("large", "large"),
}
# The first N of these (then again from the top) make N requests: the first few cover
# a result, a bad file, hostile names, the upload limit, a path not uploaded, a link and a
# clip that breaks half-way.
ORDER = ["landscape", "not-video", "name-traversal", "over-size", "name-shell", "path-outside",
         "link", "damaged", "portrait", "corrupt", "no-face", "too-long", "small-webm",
         "name-unicode", "name-semicolon", "image", "large"]
assert sorted(ORDER) == sorted(CASES)


def plan(requests: int, *, large: bool) -> list[Case]:
    kinds = [kind for kind in ORDER if large or kind != "large"]
    return [CASES[kinds[i % len(kinds)]] for i in range(requests)]


# --- the server -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class Server:
    """`python app.py` in a subprocess: 127.0.0.1, a free port, TMPDIR under `root`."""

    def __init__(self, root: Path, env: dict[str, str], *, name: str):
        self.root = root
        self.tmp = root / "tmp"  # TMPDIR: Gradio's cache, uploads, results, examples
        self.cwd = root / "cwd"  # where a shell command smuggled in a name would write
        self.log_path = root / f"{name}.log"
        self.env = env
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout_s: float) -> "Server":
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        port = free_port()
        inherited = {k: v for k, v in os.environ.items()  # no stray DEEPFAKE_KD_UNTRAINED=1
                     if not k.startswith("DEEPFAKE_KD_") and k != "GRADIO_TEMP_DIR"}
        env = {**inherited, **self.env, "TMPDIR": str(self.tmp),
               "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
               "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self.url = f"http://127.0.0.1:{port}/"
        with open(self.log_path, "wb") as log:  # a fixed argv, no shell
            self.process = subprocess.Popen([sys.executable, str(APP)], cwd=self.cwd, env=env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with {self.process.returncode} while "
                                   f"starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=5) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the app did not answer within {timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def memory(self) -> dict[str, int]:
        return proc_status(self.process.pid) if self.alive else {}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tracebacks(self) -> int:
        """Tracebacks in the server's log, less Gradio's refusals of paths not uploaded (the
        "path-outside" request), which it logs as tracebacks."""
        log = self.log()
        refused = log.count("\ngradio.exceptions.InvalidPathError")
        return log.count("Traceback (most recent") - refused

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGINT (Gradio deletes its cache files on the way out), then SIGKILL."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


EXAMPLES = "deepfake-kd/examples"  # generated at start-up, kept on purpose (README)


def files_left(tmp: Path) -> tuple[list[str], list[str], int]:
    """A server's TMPDIR: (files left, example clips, empty folders). The example clips are
    written at start-up and kept on purpose, as are the copies Gradio makes of them to serve
    them (same name and size); every other file is left behind."""
    if not tmp.is_dir():
        return [], [], 0
    examples = {(p.name, p.stat().st_size) for p in (tmp / EXAMPLES).glob("*") if p.is_file()}
    left, kept, empty = [], [], 0
    for path in sorted(tmp.rglob("*")):
        if path.is_dir():
            empty += not any(path.iterdir())
        elif (path.name, path.stat().st_size) in examples:
            kept.append(str(path.relative_to(tmp)))
        else:
            left.append(str(path.relative_to(tmp)))
    return left, kept, empty


# --- requests -------------------------------------------------------------------------------

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


def same_scores(a: list, b: list) -> bool:
    return not score_difference(a, b)


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


# --- the whole test -------------------------------------------------------------------------

@dataclass
class Config:
    requests: int = 20
    concurrency: int = 6
    frames: int = 32  # the app's default
    teacher: str = ""
    student: str = ""
    untrained: bool = False
    upload_limit_mb: float = 16.0
    cache_ttl_s: int = 30
    wait_for_ttl: bool = True
    overflow_queue: int = 2
    overflow_requests: int = 6
    rss_growth_mb: float = 1536.0  # the bound on peak RSS - RSS at rest (README)
    timeout_s: float = 240.0  # one request, queueing included
    start_timeout_s: float = 300.0
    large: bool = True
    keep: bool = False  # keep the working folder (clips, server logs, temporary folders)


def model_env(config: Config, root: Path) -> tuple[dict[str, str], str]:
    """The variables that point the app at the models, and a description for the report."""
    if config.untrained:
        from .analysis import MODEL_ROLES, untrained_model
        from .models import save_model

        folders = {}
        for role, cls in MODEL_ROLES.items():  # the released architectures, random weights
            folders[role] = save_model(untrained_model(role, cls), root / "weights" / role)
        return ({"DEEPFAKE_KD_TEACHER": str(folders["teacher"]),
                 "DEEPFAKE_KD_STUDENT": str(folders["student"])},
                "untrained (random weights) in the released architectures")
    from .app_logic import short_path
    from .models.hub import default_reference

    env = {f"DEEPFAKE_KD_{role.upper()}": getattr(config, role) or default_reference(role)
           for role in ("teacher", "student")}  # the app's own choice unless named
    return env, ", ".join(f"{role} {short_path(env[f'DEEPFAKE_KD_{role.upper()}'])}"
                          for role in ("teacher", "student"))


def markers(root: Path) -> set[str]:
    """Files named as the hostile names would create them: anywhere under the load test's
    folder and the repository, and directly in the home, temporary and /etc folders."""
    found = set()
    for marker in MARKERS:
        for folder in (root, REPO):
            found.update(str(p) for p in folder.rglob(marker))
        for folder in (Path.home(), Path(tempfile.gettempdir()), Path("/etc"), Path.cwd()):
            if (folder / marker).exists():
                found.add(str(folder / marker))
    return found


def run(config: Config, work: Path | None = None, log=print) -> dict:
    """The whole load-and-fault test; returns the report (see `format_report`)."""
    root = Path(work or tempfile.mkdtemp(prefix="deepfake-kd-loadtest-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict = {"config": asdict(config), "work": str(root)}
    before = markers(root)
    servers: list[Server] = []
    try:
        env, models = model_env(config, root)
        report["models"] = models
        env.update({"DEEPFAKE_KD_MAX_UPLOAD_MB": f"{config.upload_limit_mb:g}",
                    "DEEPFAKE_KD_CACHE_TTL_S": str(config.cache_ttl_s)})
        from .limits import AppLimits

        limits = AppLimits.from_env(env)
        log(f"clips -> {root / 'clips'}")
        clips = make_clips(root / "clips", upload_limit_mb=config.upload_limit_mb,
                           max_duration_s=limits.analysis.max_duration_s, large=config.large)
        cases = plan(config.requests, large=config.large)
        download = root / "downloads"
        download.mkdir(exist_ok=True)

        log(f"starting the app ({models}) ...")
        server = Server(root / "server", env, name="server")
        servers.append(server)
        server.start(config.start_timeout_s)
        rest = server.memory()
        report["rss_at_rest_mb"] = rest["VmRSS"] / MB
        log(f"  {server.url}  RSS at rest {rest['VmRSS'] / MB:.0f} MB")

        contents = sorted({case.content for case in cases if case.content})
        log(f"reference: {len(contents)} clips, each alone ...")
        references, alone = {}, []
        for content in contents:
            outcome = run_case(CASES[content] if content in CASES else Case(content, content),
                               server.url, clips, config.frames, download, config.timeout_s, {})
            if not outcome.ok:
                raise RuntimeError(f"reference analysis of {content} failed: {outcome.detail}\n"
                                   f"{server.log_tail()}")
            references[content] = (outcome.scores, outcome.failed_frames)
            alone.append(outcome.seconds)
            log(f"  {content}: {outcome.seconds:.1f} s")
        report["alone_s"] = {"p50": percentile(alone, 50), "max": max(alone)}
        report["rss_peak_alone_mb"] = server.memory()["VmHWM"] / MB

        log(f"load: {len(cases)} requests from {config.concurrency} threads ...")
        tic = time.monotonic()
        outcomes = fire(cases, url=server.url, clips=clips, frames=config.frames,
                        download=download, timeout_s=config.timeout_s, references=references,
                        concurrency=config.concurrency)
        report["load_wall_s"] = time.monotonic() - tic
        for outcome in outcomes:
            log(f"  {'ok ' if outcome.ok else 'BAD'} {outcome.kind:<15} {outcome.seconds:6.1f} s"
                f"  {outcome.detail[:110]}")
        memory = server.memory()
        report["requests"] = len(outcomes)
        report["results"] = sum(o.ok and not CASES[o.kind].expect for o in outcomes)
        report["clear_errors"] = sum(o.ok and bool(CASES[o.kind].expect) for o in outcomes)
        report["failures"] = [f"{o.kind}: {o.detail}" for o in outcomes if not o.ok]
        latencies = [o.seconds for o in outcomes]
        report["latency_s"] = {"p50": percentile(latencies, 50),
                               "p95": percentile(latencies, 95), "max": max(latencies)}
        report["rss_peak_mb"] = memory["VmHWM"] / MB
        report["rss_after_mb"] = memory["VmRSS"] / MB
        report["rss_growth_mb"] = (memory["VmHWM"] - rest["VmRSS"]) / MB
        report["rss_bound_mb"] = report["rss_at_rest_mb"] + config.rss_growth_mb
        report["server_alive"] = server.alive
        report["server_tracebacks"] = server.tracebacks()

        if config.wait_for_ttl:
            wait = config.cache_ttl_s + limits.cache_sweep_s + 3
            log(f"waiting {wait} s for the files' lifetime ({config.cache_ttl_s} s) to pass ...")
            time.sleep(wait)
            report["files_left_running"] = files_left(server.tmp)[0]
        report["path_outside_refused"] = REFUSED_OUTSIDE in server.log()
        server.stop()
        report["server_exit"] = server.process.returncode
        (report["files_left"], report["example_files"],
         report["empty_folders_left"]) = files_left(server.tmp)

        log(f"queue overflow: {config.overflow_requests} requests at once, queue of "
            f"{config.overflow_queue} ...")
        overflow_env = {**env, "DEEPFAKE_KD_MAX_QUEUE": str(config.overflow_queue)}
        busy = Server(root / "busy", overflow_env, name="busy")
        servers.append(busy)
        busy.start(config.start_timeout_s)
        alone = run_case(CASES["landscape"], busy.url, clips, config.frames, download,
                         config.timeout_s, {})  # this server's own reference
        own = {"landscape": (alone.scores, alone.failed_frames)} if alone.ok else {}
        burst = fire([CASES["landscape"]] * config.overflow_requests, url=busy.url, clips=clips,
                     frames=config.frames, download=download, timeout_s=config.timeout_s,
                     references=own, concurrency=config.overflow_requests, together=True)
        after = run_case(CASES["landscape"], busy.url, clips, config.frames, download,
                         config.timeout_s, own)
        report["overflow"] = {
            "sent": len(burst), "served": sum(o.ok for o in burst),
            "queue_full": sum(o.queue_full for o in burst),
            "other_failures": [f"{o.kind}: {o.detail}" for o in burst
                               if not o.ok and not o.queue_full],
            "message": next((o.detail for o in burst if o.queue_full), ""),
            "answers_afterwards": alone.ok and after.ok, "server_alive": busy.alive,
            "server_tracebacks": busy.tracebacks()}
        busy.stop()
        report["busy_files_left"] = files_left(busy.tmp)[0]
        report["hostile_files_created"] = sorted(markers(root) - before)
    except Exception as exc:  # noqa: BLE001 - the report says what broke
        report["aborted"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    finally:
        for server in servers:
            server.stop()
        report["wall_s"] = time.monotonic() - started
        report["passed"] = passed(report, config)
        if not config.keep and report["passed"]:  # kept on failure: logs and clips to look at
            shutil.rmtree(root, ignore_errors=True)
    return report


def passed(report: dict, config: Config) -> bool:
    overflow = report.get("overflow", {})
    return ("aborted" not in report and not report["failures"]
            and report["requests"] == config.requests
            and report["rss_growth_mb"] <= config.rss_growth_mb
            and report["server_alive"] and not report["files_left"]
            and not report.get("files_left_running") and not report["busy_files_left"]
            and report["path_outside_refused"] == ("path-outside" in
                                                   [c.kind for c in plan(config.requests,
                                                                         large=config.large)])
            and report["server_tracebacks"] == 0
            and overflow.get("queue_full", 0) > 0 and not overflow["other_failures"]
            and overflow["served"] + overflow["queue_full"] == overflow["sent"]
            and overflow["answers_afterwards"] and overflow["server_alive"]
            and not report["hostile_files_created"])


def format_report(report: dict) -> str:
    """The report as the lines the README quotes; parts a run did not reach are left out."""
    config, lines = report["config"], [f"models: {report.get('models', '?')}"]
    if "requests" in report:
        latency = report["latency_s"]
        lines += [
            f"requests: {report['requests']} ({report['results']} results, "
            f"{report['clear_errors']} clear errors), unexpected failures: "
            f"{len(report['failures'])}",
            *[f"  FAILED {failure}" for failure in report["failures"]],
            f"latency under load: p50 {latency['p50']:.1f} s, p95 {latency['p95']:.1f} s, "
            f"max {latency['max']:.1f} s ({config['concurrency']} clients; one clip alone: "
            f"median {report['alone_s']['p50']:.1f} s; {report['load_wall_s']:.0f} s for all)",
            f"server RSS: {report['rss_at_rest_mb']:.0f} MB at rest, peak "
            f"{report['rss_peak_mb']:.0f} MB (+{report['rss_growth_mb']:.0f} MB; bound "
            f"{report['rss_bound_mb']:.0f} MB = rest + {config['rss_growth_mb']:.0f} MB), "
            f"{report['rss_after_mb']:.0f} MB after the load"]
    if "files_left" in report:
        running = report.get("files_left_running")
        lines += [
            "files left: " + (f"{len(running)} once {config['cache_ttl_s']} s old, "
                              if running is not None else "")
            + f"{len(report['files_left'])} after stopping (besides "
            f"{len(report['example_files'])} example clips, kept on purpose; "
            f"{report['empty_folders_left']} empty folders)",
            *[f"  LEFT {name}" for name in (running or []) + report["files_left"]],
            f"server: {report['server_tracebacks']} unexpected tracebacks in its log; a path "
            f"outside the upload folder refused: {report['path_outside_refused']}"]
    overflow = report.get("overflow")
    if overflow:
        lines.append(
            f"queue overflow: {overflow['sent']} at once into a queue of "
            f"{config['overflow_queue']}: {overflow['served']} served, {overflow['queue_full']} "
            f"refused ({overflow['message'][:60]!r}), {len(overflow['other_failures'])} other "
            f"failures; answers afterwards: {overflow['answers_afterwards']}")
    if "hostile_files_created" in report:
        lines.append(f"files created by hostile names: {len(report['hostile_files_created'])}")
    if "aborted" in report:
        lines += [f"ABORTED: {report['aborted']}", report.get("traceback", "")]
    lines.append(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['wall_s']:.0f} s"
                 + ("" if report["passed"] else f"; files kept in {report['work']}"))
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------

def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "loadtest", help="load-and-fault test of the served app (starts it itself)",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests under load (20)")
    parser.add_argument("--concurrency", type=int, default=6, help="client threads (6)")
    parser.add_argument("--frames", type=int, default=32,
                        help="frames per analysis (32, the app's default)")
    parser.add_argument("--teacher", metavar="REF", help="teacher weights (default: the app's)")
    parser.add_argument("--student", metavar="REF", help="student weights (default: the app's)")
    parser.add_argument("--untrained", action="store_true",
                        help="random weights in the released architectures (same compute)")
    parser.add_argument("--timeout-s", type=float, default=240.0,
                        help="limit for one request, queueing included (240)")
    parser.add_argument("--rss-growth-mb", type=float, default=1536.0,
                        help="bound on the server's peak RSS above its RSS at rest (1536)")
    parser.add_argument("--cache-ttl-s", type=int, default=30,
                        help="lifetime of the server's temporary files (30)")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep clips, logs and temp folders")
    parser.set_defaults(run=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if args.untrained and (args.teacher or args.student):
        raise SystemExit("error: --untrained replaces --teacher/--student")
    config = Config(requests=args.requests, concurrency=args.concurrency, frames=args.frames,
                    teacher=args.teacher or "", student=args.student or "",
                    untrained=args.untrained, timeout_s=args.timeout_s,
                    rss_growth_mb=args.rss_growth_mb, cache_ttl_s=args.cache_ttl_s,
                    keep=args.keep)
    report = run(config, log=lambda text: print(text, flush=True))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1
