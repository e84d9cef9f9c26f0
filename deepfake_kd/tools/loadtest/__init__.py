"""The load-and-fault test of the served app (README "Reliability"), split by concern: the
files it sends (clips), the server it starts (server), the requests and their judgement
(client), the whole test and its report (run), and its command line (cli)."""

from .cli import add_cli, run_cli
from .client import Outcome, per_frame_scores, run_case, score_difference
from .clips import CASES, ORDER, Case, make_clips, plan
from .run import Config, format_report, passed, run
from .server import Server, files_left

__all__ = ["add_cli", "run_cli", "Outcome", "per_frame_scores", "run_case", "score_difference",
           "CASES", "ORDER", "Case", "make_clips", "plan", "Config", "format_report", "passed",
           "run", "Server", "files_left"]
