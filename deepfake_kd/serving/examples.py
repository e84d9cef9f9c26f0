"""Example clips the app offers, made from the public-domain astronaut photo (never DFDC clips).

They are generated, not shipped: a few seconds of the photo moving over a grey background,
written as VP8 WebM (OpenCV's pip build writes it, and every browser plays it, so the example
previews in the page). The first call writes them into a cache folder; later calls reuse them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..util import atomic_path

PHOTO = Path(__file__).resolve().parent / "assets" / "astronaut.png"  # public domain (NASA)
FACE_CENTRE = (224, 117)  # of the face in the photo (MTCNN box 181,62 - 268,172)
SIZE = (640, 360)  # width, height
FPS = 10.0
GREY = (128, 128, 128)


def default_folder() -> Path:
    return Path(tempfile.gettempdir()) / "deepfake-kd" / "examples"


def example_clips(folder: str | Path | None = None) -> list[Path]:
    """The example clips, written into `folder` where missing: one person, two people."""
    folder = Path(folder) if folder else default_folder()
    folder.mkdir(parents=True, exist_ok=True)
    clips = {"astronaut.webm": one_person_frames, "two_astronauts.webm": two_people_frames}
    paths = []
    for name, make_frames in clips.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            write_webm(path, make_frames(load_photo()))
        paths.append(path)
    return paths


def load_photo() -> np.ndarray:
    image = cv2.imread(str(PHOTO))
    if image is None:
        raise FileNotFoundError(f"{PHOTO}: the example photo is missing")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def place(canvas: np.ndarray, photo: np.ndarray, *, centre: tuple[float, float],
          scale: float) -> np.ndarray:
    """`canvas` with the photo scaled by `scale` drawn so its face lands at `centre`."""
    height, width = canvas.shape[:2]
    shift = np.float32([[scale, 0, centre[0] - FACE_CENTRE[0] * scale],
                        [0, scale, centre[1] - FACE_CENTRE[1] * scale]])
    return cv2.warpAffine(photo, shift, (width, height), dst=canvas.copy(),
                          borderMode=cv2.BORDER_TRANSPARENT)


def blank() -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), GREY, dtype=np.uint8)


def one_person_frames(photo: np.ndarray) -> list[np.ndarray]:
    """4 s: the face drifts right and comes closer for 3 s, then 1 s of empty background."""
    steps = int(3 * FPS)
    frames = [place(blank(), photo, centre=(220 + 6 * k, 170 + k), scale=0.9 + 0.01 * k)
              for k in range(steps)]
    return frames + [blank() for _ in range(int(FPS))]


def two_people_frames(photo: np.ndarray) -> list[np.ndarray]:
    """3 s, two faces: one on the left throughout, a second joins on the right after 1 s."""
    frames = []
    for k in range(int(3 * FPS)):
        frame = place(blank(), photo, centre=(170, 160 + k), scale=0.85)
        if k >= FPS:
            frame = place(frame, photo, centre=(480 - 2 * k, 180), scale=0.95)
        frames.append(frame)
    return frames


def write_webm(path: Path, frames: list[np.ndarray]) -> Path:
    """RGB frames -> VP8 WebM; written beside and renamed, so no half-written clip is left."""
    with atomic_path(path) as partial:
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"VP80"), FPS, SIZE)
        if not writer.isOpened():
            raise RuntimeError(f"cannot write {path}: this OpenCV build has no VP8 encoder")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return path
