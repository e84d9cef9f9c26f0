"""Load and fault test of the served app: many users at once, broken uploads and hostile files.

`python -m deepfake_kd loadtest` starts `app.py` itself, in a subprocess on 127.0.0.1 with a
free port and a temporary folder of its own (TMPDIR, so Gradio's cache, the uploads, the result
files and the example clips all land under one folder it can inspect), and then:

1. generates its clips from the app's example photo (serving/assets/astronaut.png): valid
   ones of several sizes, orientations and codecs (one too large to decode whole within the
   memory bound), one that stops decoding half-way, one without a face; and bad ones: corrupt,
   not a video, an image, too long, and one over the upload limit (the server is started with
   a small upload limit, so the file is small);
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

import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from ...limits import MB, AppLimits
from ...models import save_model
from ...roles import PROJECT_ROOT, ROLES, UNTRAINED, default_reference, short_path, untrained_model
from .client import fire, percentile, run_case
from .clips import CASES, MARKERS, Case, make_clips, plan
from .server import Server, files_left

REFUSED_OUTSIDE = f"Cannot move {PROJECT_ROOT / 'README.md'} to the gradio cache dir"  # Gradio


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
    if config.untrained:  # the released architectures, random weights
        env = {ROLES[role].env: str(save_model(untrained_model(role), root / "weights" / role))
               for role in ROLES}
        return env, f"{UNTRAINED} in the released architectures"
    references = {role: getattr(config, role) or default_reference(role)
                  for role in ROLES}  # the app's own choice unless named
    return ({ROLES[role].env: reference for role, reference in references.items()},
            ", ".join(f"{role} {short_path(reference)}" for role, reference in references.items()))


def markers(root: Path) -> set[str]:
    """Files named as the hostile names would create them: anywhere under the load test's
    folder and the repository, and directly in the home, temporary and /etc folders."""
    found = set()
    for marker in MARKERS:
        for folder in (root, PROJECT_ROOT):
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
            and overflow["server_tracebacks"] == 0
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
            f"outside the upload folder refused: {report['path_outside_refused']}; exit code "
            f"{report['server_exit']} (a negative code: killed by that signal, so Gradio's "
            f"clean-up on SIGINT never ran)"]
    overflow = report.get("overflow")
    if overflow:
        lines.append(
            f"queue overflow: {overflow['sent']} at once into a queue of "
            f"{config['overflow_queue']}: {overflow['served']} served, {overflow['queue_full']} "
            f"refused ({overflow['message'][:60]!r}), {len(overflow['other_failures'])} other "
            f"failures; answers afterwards: {overflow['answers_afterwards']}; "
            f"{overflow['server_tracebacks']} unexpected tracebacks in its log")
        lines += [f"  FAILED {failure}" for failure in overflow["other_failures"]]
    if "hostile_files_created" in report:
        lines.append(f"files created by hostile names: {len(report['hostile_files_created'])}")
    if "aborted" in report:
        lines += [f"ABORTED: {report['aborted']}", report.get("traceback", "")]
    lines.append(f"{'PASSED' if report['passed'] else 'FAILED'} in {report['wall_s']:.0f} s"
                 + ("" if report["passed"] else f"; files kept in {report['work']}"))
    return "\n".join(lines)
