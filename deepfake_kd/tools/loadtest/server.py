"""The app under test: `python app.py` in a subprocess with a port and a temporary folder of
its own, its memory (/proc) and the files it leaves behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ...pipeline.runtime import ENV_CACHE
from ...roles import ENV_PREFIX, PROJECT_ROOT

APP = PROJECT_ROOT / "app.py"


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

    def start(self, timeout_s: float) -> Server:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        port = free_port()
        inherited = {k: v for k, v in os.environ.items()  # no stray DEEPFAKE_KD_UNTRAINED=1
                     if (not k.startswith(ENV_PREFIX) or k == ENV_CACHE)  # exports: reused
                     and k != "GRADIO_TEMP_DIR"}
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
