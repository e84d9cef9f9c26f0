"""Shared fixtures: small synthetic clips made from a public-domain photo, tiny saved models,
and one face detector for the session (MTCNN is built once, as the app does).

Tests reach everything here through fixtures, never `import conftest`, so they run whether or
not tests/ is a package."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfake_kd.models import CrossEfficientViT, StudentCNN, save_model
from deepfake_kd.pipeline.faces import FaceDetector
from deepfake_kd.serving.examples import PHOTO

ASTRONAUT = PHOTO  # the app's example photo (public domain)
FACE_CENTRE = (224, 117)  # of the face MTCNN finds in astronaut.png (box 181,62 - 268,172)


def tiny_teacher() -> CrossEfficientViT:
    return CrossEfficientViT(backbone="efficientnet_b0", depth=1, sm_enc_depth=1, lg_enc_depth=1,
                             sm_enc_mlp_dim=64, lg_enc_mlp_dim=64, sm_dim=32, lg_dim=32,
                             cross_attn_depth=1)


def tiny_student() -> StudentCNN:
    return StudentCNN(widths=(4, 8))


def photo() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)


def face_frame(size: tuple[int, int], *, centre: tuple[float, float], scale: float
               ) -> np.ndarray:
    """A grey (width, height) frame with the photo scaled by `scale`, its face at `centre`."""
    width, height = size
    image = cv2.resize(photo(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    shift = np.float32([[1, 0, centre[0] - FACE_CENTRE[0] * scale],
                        [0, 1, centre[1] - FACE_CENTRE[1] * scale]])
    return cv2.warpAffine(image, shift, (width, height), borderValue=(128, 128, 128))


def blank_frame(size: tuple[int, int]) -> np.ndarray:
    return np.full((size[1], size[0], 3), 90, dtype=np.uint8)


def noise_frame(size: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def write_clip(path: Path, frames: list[np.ndarray], *, fps: float,
               fourcc: str = "mp4v") -> Path:
    """RGB frames -> a video file OpenCV's FFmpeg backend can read back."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path} with {fourcc}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_av_clip(path: Path, frames: list[np.ndarray], *, fps: int, codec: str,
                  pix_fmt: str = "yuv420p", options: dict | None = None,
                  rotation: int = 0) -> Path:
    """RGB frames -> a clip encoded by PyAV (any FFmpeg encoder), optionally with a display
    matrix that turns it by `rotation` degrees counter-clockwise for display."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


LANDSCAPE = (480, 360)
FACE_FRAMES = list(range(2, 10))  # frames 0, 1, 10, 11 are blank or noise


def landscape_frames() -> list[np.ndarray]:
    """12 frames: blank, noise, 8 frames of the face moving right and growing, blank, noise."""
    faces = [face_frame(LANDSCAPE, centre=(150 + 25 * k, 150 + 6 * k), scale=0.8 + 0.025 * k)
             for k in range(len(FACE_FRAMES))]
    return [blank_frame(LANDSCAPE), noise_frame(LANDSCAPE, 0), *faces,
            blank_frame(LANDSCAPE), noise_frame(LANDSCAPE, 1)]


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """ONNX exports of the tiny models (the default runtime) go to a temporary folder, never
    into the user's cache; subprocesses (the served app, the CLI) inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPFAKE_KD_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
        yield


@pytest.fixture(scope="session")
def astronaut() -> Path:
    return ASTRONAUT


@pytest.fixture(scope="session")
def face_frame_indices() -> list[int]:
    return FACE_FRAMES


@pytest.fixture(scope="session")
def landscape() -> list[np.ndarray]:
    """The frames of `face_clip`, before encoding."""
    return landscape_frames()


@pytest.fixture(scope="session")
def make_clip():
    """write_clip(path, rgb_frames, *, fps, fourcc="mp4v") -> path."""
    return write_clip


@pytest.fixture(scope="session")
def make_av_clip():
    """write_av_clip(path, rgb_frames, *, fps, codec, pix_fmt, options, rotation) -> path."""
    return write_av_clip


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def face_clip(clip_dir) -> Path:
    """480x360, 12 frames at 10 fps; the face is in FACE_FRAMES only."""
    return write_clip(clip_dir / "face.mp4", landscape_frames(), fps=10)


@pytest.fixture(scope="session")
def portrait() -> list[np.ndarray]:
    """The frames of `portrait_clip`, before encoding."""
    return [face_frame((240, 320), centre=(120, 140 + 5 * k), scale=0.75) for k in range(8)]


@pytest.fixture(scope="session")
def portrait_clip(clip_dir, portrait) -> Path:
    """240x320 (portrait), 8 frames at 25 fps, the face in every frame."""
    return write_clip(clip_dir / "portrait.mp4", portrait, fps=25)


@pytest.fixture(scope="session")
def no_face_clip(clip_dir) -> Path:
    frames = [blank_frame((320, 240)) if k % 2 else noise_frame((320, 240), k) for k in range(6)]
    return write_clip(clip_dir / "no_face.mp4", frames, fps=10)


@pytest.fixture(scope="session")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="session")
def tiny_models() -> dict:
    return {"teacher": tiny_teacher().eval(), "student": tiny_student().eval()}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """The tiny models saved as weights folders, as `load_model` expects them."""
    root = tmp_path_factory.mktemp("weights")
    return {name: save_model(model, root / name) for name, model in tiny_models.items()}


@pytest.fixture(scope="session")
def crop_folder(tmp_path_factory) -> Path:
    """real/ and fake/ 224x224 crops: the same face, the "fakes" with a blurred, tinted centre."""
    root = tmp_path_factory.mktemp("crops")
    photo = cv2.imread(str(ASTRONAUT))
    rng = np.random.default_rng(0)
    for label in ("real", "fake"):
        (root / label).mkdir()
        for i in range(24):
            x, y, side = 170 + rng.integers(-10, 10), 50 + rng.integers(-10, 10), 110
            crop = cv2.resize(photo[y:y + side, x:x + side], (224, 224))
            if label == "fake":
                centre = crop[56:168, 56:168]
                crop[56:168, 56:168] = cv2.GaussianBlur(centre, (9, 9), 4) // 2 + 60
            cv2.imwrite(str(root / label / f"{label}{i:02d}.jpg"), crop)
    return root
