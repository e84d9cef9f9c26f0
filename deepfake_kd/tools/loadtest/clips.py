"""The load test's files: valid clips of several sizes, orientations and codecs made from the
public-domain photo, broken and hostile ones, and the requests (`Case`) that send them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from ...limits import MB
from ...roles import PROJECT_ROOT
from ...serving.examples import PHOTO, load_photo, place

# Names a shell or a path join would act on; each is uploaded as the name of a valid clip.
HOSTILE_NAMES = {
    "name-shell": "$(touch pwned).mp4",
    "name-semicolon": "; rm -rf x.mp4",
    "name-unicode": "ünïcødé 顔 🎭 'quote\" `tick`.mp4",
    "name-traversal": "../../etc/passwd.mp4",  # not a local file name: sent as raw HTTP
}
MARKERS = ("pwned", "passwd.mp4")  # what those names would create if obeyed


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
    shutil.copy(PHOTO, clips["image"])
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
    "path-outside": Case("path-outside", "", raw="path", path=str(PROJECT_ROOT / "README.md"),
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


def plan(requests: int, *, large: bool) -> list[Case]:
    kinds = [kind for kind in ORDER if large or kind != "large"]
    return [CASES[kinds[i % len(kinds)]] for i in range(requests)]
