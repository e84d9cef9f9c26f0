"""What one request does, testable without a server.

`Analyzer` turns one request (upload, number of frames, threshold) into the page: the texts
(`texts`), the two figures (`plots`), the gallery of face crops and the JSON file. The page is
rendered twice: once the student has scored (the teacher's panel says it is still scoring),
then complete, with the JSON file. Every failure
a person can fix becomes a `gr.Error` with a message meant for them, and the next request is
served normally. `refuse_links` keeps the clip input to uploads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from gradio_client.utils import is_http_url_like
from PIL import Image

from ..errors import DeepfakeKDError
from ..limits import AppLimits
from ..pipeline.analysis import AnalysisResult, analysis_steps
from ..pipeline.faces import FaceDetector
from ..roles import ROLES
from ..util import write_atomically
from .loading import AppModels
from .plots import cost_figure, probability_figure
from .texts import LINK_REFUSED, gallery_items, not_ready_message, panel_markdown, summary_markdown

log = logging.getLogger(__name__)


@dataclass
class Report:
    """Everything the page shows for one analysed clip, or for the models scored so far."""

    result: AnalysisResult
    summary: str
    panels: dict[str, str]  # role -> markdown
    probability: go.Figure
    cost: go.Figure
    gallery: list[tuple[np.ndarray, str]]  # (crop, caption)
    json_path: Path | None  # None until every model has scored
    folder: Path  # this request's own: the gallery's pictures are written there

    def outputs(self) -> tuple:
        """In the order of `Analyzer.OUTPUTS` (app.py wires the components in that order)."""
        values = {"summary": self.summary, "probability": self.probability, "cost": self.cost,
                  "gallery": gallery_files(self.gallery, self.folder),
                  "json": str(self.json_path) if self.json_path else None,
                  **{f"panel_{role}": text for role, text in self.panels.items()}}
        return tuple(values[name] for name in Analyzer.OUTPUTS)


class RecentResults:
    """The last few analysed clips, face crops included, by the content of their result file:
    what the heatmaps explain after the verdicts (`explaining`), for the page that holds that
    file. By content, because Gradio hands an input file to a handler as a fresh copy; kept here
    rather than in a gr.State, which would make every client hold a heartbeat connection open;
    bounded by count, each clip holding its crops (150 KB a face)."""

    MAX_FILE_BYTES = 16 * 2**20  # a result file is far smaller; anything larger is not one

    def __init__(self, size: int):
        self.size = size
        self._results: OrderedDict[str, AnalysisResult] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def key(cls, path: str | Path) -> str | None:
        try:
            if Path(path).stat().st_size > cls.MAX_FILE_BYTES:
                return None
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return None

    def add(self, path: str | Path, result: AnalysisResult) -> None:
        key = self.key(path)
        with self._lock:
            self._results[key] = result
            while len(self._results) > self.size:
                self._results.popitem(last=False)

    def get(self, path: str | Path | None) -> AnalysisResult | None:
        key = self.key(path) if path else None
        with self._lock:
            return self._results.get(key) if key else None


class UserError(gr.Error):
    """A message for the person at the page; no traceback in the server log."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


class Analyzer:
    """Holds the models and the face detector for the app's lifetime and serves requests."""

    OUTPUTS = ("summary", *(f"panel_{role}" for role in ROLES), "probability", "cost",
               "gallery", "json")

    def __init__(self, app_models: AppModels, *, detector: FaceDetector | None = None,
                 limits: AppLimits = AppLimits(), results_dir: str | Path | None = None):
        self.app_models = app_models
        self.detector = detector or FaceDetector()
        self.limits = limits
        self.files = ResultFiles(results_dir or results_folder(), ttl_s=limits.cache_ttl_s)
        # every analysis waiting in the queue may finish before one's heatmaps start
        self.recent = RecentResults(limits.max_queue + 1)

    def handle(self, video, num_frames, threshold, progress=gr.Progress()) -> Iterator[tuple]:
        """The Analyze button: the page's outputs, in the order of `OUTPUTS`, as soon as the
        student has scored, then complete (a generator: Gradio shows each as it comes; an API
        client's result is the last)."""
        for report in self.reports(video, num_frames, threshold,
                                   progress=lambda fraction, text: progress(fraction, desc=text)):
            yield report.outputs()

    def analyze(self, video, num_frames, threshold,
                progress: Callable[[float, str], None] | None = None) -> Report:
        """The complete report of one request (the last of `reports`)."""
        *_, report = self.reports(video, num_frames, threshold, progress=progress)
        return report

    def reports(self, video, num_frames, threshold,
                progress: Callable[[float, str], None] | None = None) -> Iterator[Report]:
        """Check the request, analyse the clip, render the result after each model (smallest
        first); raises `gr.Error` with a message for people on anything a person can fix, and
        on anything unexpected."""
        if not self.app_models.ready:
            raise UserError(not_ready_message(self.app_models))
        path = check_upload(video)
        if not path.exists():  # say so without the server's folders in the message
            raise UserError(f"{path.name}: no such file on the server (uploads are deleted "
                            f"after {self.limits.cache_ttl_s / 60:g} minutes); upload the clip "
                            "again.")
        frames = check_frames(num_frames, self.limits.analysis.max_frames)
        threshold = check_threshold(threshold)
        steps = analysis_steps(path, self.app_models.models, num_frames=frames,
                               threshold=threshold, detector=self.detector,
                               limits=self.limits.analysis, sources=self.app_models.sources,
                               progress=progress)
        folder = self.files.new_folder()
        while True:
            try:
                result = next(steps)
            except StopIteration:
                return
            except DeepfakeKDError as exc:
                raise UserError(str(exc)) from None
            except Exception as exc:  # a bug or a file no check foresaw: log it, tell the person
                log.exception("analysis of %s failed", path)
                raise UserError(f"{path.name}: the analysis failed unexpectedly "
                                f"({type(exc).__name__}). Try another clip, or re-encode this "
                                "one as H.264 MP4.") from None
            yield self.render(result, folder)

    def render(self, result: AnalysisResult, folder: Path | None = None) -> Report:
        """The page for `result`; the JSON file only once every model has scored. `folder`:
        the request's own (a new one when not given)."""
        folder = folder or self.files.new_folder()
        pending = [role for role in self.app_models.models if role not in result.models]
        return Report(
            result=result, summary=summary_markdown(result, pending=pending),
            panels={role: panel_markdown(role, self.app_models, result) for role in ROLES},
            probability=probability_figure(result), cost=cost_figure(result),
            gallery=gallery_items(result, self.limits.max_gallery),
            json_path=None if pending else self.write_json(result, folder), folder=folder)

    def idle_panel(self, role: str) -> str:
        """A panel before any analysis: the model's size and weights, or why it is missing."""
        return panel_markdown(role, self.app_models, None)

    def write_json(self, result: AnalysisResult, folder: Path) -> Path:
        """The full result as a JSON file in the request's folder; the clip behind it is kept
        in `recent`, for the heatmaps."""
        path = folder / f"{safe_stem(result.path)}-deepfake-kd.json"
        write_atomically(path, json.dumps(result.to_dict(), indent=2))
        self.recent.add(path, result)
        return path


class ResultFiles:
    """The files the page hands out (result JSON, gallery pictures): each request's in a folder
    of its own under `root`; folders older than `ttl_s` are removed as new ones are made."""

    def __init__(self, root: str | Path, *, ttl_s: float):
        self.root = Path(root)
        self.ttl_s = ttl_s

    def new_folder(self) -> Path:
        prune(self.root, older_than_s=self.ttl_s)
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder


def gallery_files(items: list[tuple[np.ndarray, str]], folder: Path) -> list[tuple[str, str]]:
    """A gallery's (picture, caption) items with each picture as a WebP file in `folder`, named
    by its content and written once. Why not hand Gradio the arrays: it saves each to a path
    named by the picture's bytes and rewrites that file in place on every answer that shows it,
    so two requests showing the same faces (two people on one clip; one page fetching a picture
    as the next answer rewrites it) can read a half-written file. The load test's burst of 5
    identical requests lost one that way ('Too much data for declared Content-Length')."""
    out = []
    for picture, caption in items:
        picture = np.ascontiguousarray(picture, dtype=np.uint8)
        name = hashlib.sha1(picture.tobytes() + str(picture.shape).encode()).hexdigest()[:20]
        path = folder / f"{name}.webp"
        if not path.is_file():
            encoded = io.BytesIO()
            Image.fromarray(picture).save(encoded, format="WEBP", quality=90)
            write_atomically(path, encoded.getvalue())
        out.append((str(path), caption))
    return out


def results_folder() -> Path:
    """Where the app writes result files: inside Gradio's cache folder (GRADIO_TEMP_DIR,
    default <tmp>/gradio), so Gradio hands them out without copying them again and deletes
    them with the uploads (`delete_cache`) and when the server stops."""
    return Path(gr.utils.get_upload_folder()) / "deepfake-kd-results"


def safe_stem(path: str) -> str:
    """A file name made from an upload's name: letters (any script), digits, '-', '_' and '.'
    only, at most 80 characters, never empty or hidden, so nothing in the name can lead out of
    the results folder."""
    stem = re.sub(r"[^\w.-]+", "_", Path(str(path)).stem).strip("._-")[:80]
    while len(stem.encode()) > 160:  # file names are at most 255 bytes
        stem = stem[:-1]
    return stem or "clip"


def prune(folder: Path, *, older_than_s: float) -> None:
    if not folder.is_dir():
        return
    cutoff = time.time() - older_than_s
    for child in folder.iterdir():
        try:
            if child.is_dir() and child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            pass  # another request removed it first


def refuse_links(component):
    """Make a file input take only files uploaded to this server. Gradio downloads any http(s)
    URL that a client names as a file input's path, before the handler runs and with no size
    limit, so a hand-made API call could make the server fetch a file of any size. The page and
    gradio_client always upload (with the size limit enforced while the upload streams in)."""
    move, async_move = (component.move_resource_to_block_cache,
                        component.async_move_resource_to_block_cache)

    def local_only(url_or_file_path):
        if is_http_url_like(str(url_or_file_path)):
            raise UserError(LINK_REFUSED)
        return move(url_or_file_path)

    async def async_local_only(url_or_file_path):
        if is_http_url_like(str(url_or_file_path)):
            raise UserError(LINK_REFUSED)
        return await async_move(url_or_file_path)

    component.move_resource_to_block_cache = local_only
    component.async_move_resource_to_block_cache = async_local_only
    return component


def check_upload(video) -> Path:
    """The upload's path; gradio passes a path string (or a FileData-like dict)."""
    if isinstance(video, dict):
        video = video.get("path") or video.get("video")
    if not video:
        raise UserError("No clip yet: upload a video (or pick an example), then press Analyze.")
    return Path(str(video))


def check_frames(value, maximum: int) -> int:
    try:
        frames = float(value)
    except (TypeError, ValueError):
        raise UserError(f"Frames to sample must be a whole number, got {value!r}.") from None
    if not (math.isfinite(frames) and frames == int(frames) and 1 <= frames <= maximum):
        raise UserError(f"Frames to sample must be a whole number from 1 to {maximum}, "
                        f"got {value!r}.")
    return int(frames)


def check_threshold(value) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:  # also NaN
        raise UserError(f"The threshold must be a probability between 0 and 1, got {value!r}.")
    return threshold
