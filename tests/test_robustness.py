"""Degradations (the robustness report's conditions), the training augmentation aimed at the
low-resolution shortcut, class balance, the resolution schedule and attention dropout."""

import cv2
import numpy as np
import pytest
import torch

from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.models import CrossEfficientViT
from deepfake_kd.training.data import (
    DEGRADATIONS,
    Augment,
    class_balance_weights,
    degrade_crops,
    gaussian_blur,
    jpeg_roundtrip,
    shrink_and_restore,
)
from deepfake_kd.training.metrics import real_alarm_figures
from tests.conftest import ASTRONAUT
from tests.test_models import TINY_TEACHER


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A sharp 224 px RGB face crop from the public-domain photo."""
    photo = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(cv2.resize(photo[40:200, 160:320], (224, 224),
                                           interpolation=cv2.INTER_AREA))


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian: high for fine detail, low for a soft image."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def blockiness(image: np.ndarray) -> float:
    """Mean jump across 8x8 block borders over the mean jump elsewhere (JPEG's block edges)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(float)
    jumps = np.abs(np.diff(grey, axis=1))
    at_border = jumps[:, 7::8].mean()
    inside = np.delete(jumps, np.s_[7::8], axis=1).mean()
    return at_border / inside


def test_shrinking_to_64_px_removes_detail_like_a_small_face(face):
    out = shrink_and_restore(face, 64)
    assert out.shape == face.shape and out.dtype == np.uint8
    assert sharpness(out) < 0.5 * sharpness(face)
    assert abs(out.astype(float).mean() - face.astype(float).mean()) < 2.0  # same picture
    assert shrink_and_restore(face, 224) is face  # no shrink at full size


def test_jpeg_35_adds_block_edges(face):
    out = jpeg_roundtrip(face, 35)
    assert out.shape == face.shape and out.dtype == np.uint8
    assert blockiness(out) > blockiness(face) + 0.1
    assert 1.0 < np.abs(out.astype(float) - face).mean() < 20.0


def test_blur_sigma_is_relative_to_a_224_px_crop(face):
    out = gaussian_blur(face, 1.2)
    assert sharpness(out) < 0.5 * sharpness(face)
    small = cv2.resize(face, (112, 112), interpolation=cv2.INTER_AREA)
    # the same blur on a half-size crop is half as many pixels wide
    assert np.abs(gaussian_blur(small, 1.2).astype(float)
                  - cv2.GaussianBlur(small, (0, 0), 0.6)).max() <= 1


def test_combined_degradation_is_all_three_and_every_one_is_deterministic(face):
    crops = np.stack([face, face[:, ::-1]])
    for name in DEGRADATIONS:
        first, again = degrade_crops(crops, name), degrade_crops(crops, name)
        assert first.shape == crops.shape and first.dtype == np.uint8
        assert np.array_equal(first, again)
        assert not np.array_equal(first, crops)
    combined = degrade_crops(crops, "combined")[0]
    assert np.array_equal(combined, jpeg_roundtrip(gaussian_blur(shrink_and_restore(face, 64),
                                                                 1.2), 35))
    assert sharpness(combined) < sharpness(degrade_crops(crops, "jpeg35")[0])
    with pytest.raises(DeepfakeKDError, match="unknown degradation"):
        degrade_crops(crops, "sepia")


def test_real_alarm_figures_count_only_reals():
    labels = np.array([0, 0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.52, 0.6, 0.9, 0.0, 0.0])
    figures = real_alarm_figures(labels, probs, thresholds=(0.5, 0.55))
    assert figures == pytest.approx({"reals_fake_at_0.5": 0.75, "reals_fake_at_0.55": 0.5,
                                     "reals_mean_p_fake": 0.53})


def test_augment_is_reproducible_and_covers_the_degradations(face):
    batch = torch.from_numpy(np.stack([face] * 16)).permute(0, 3, 1, 2).contiguous()
    first = Augment()(batch, torch.Generator().manual_seed(1))
    assert first.shape == batch.shape and first.dtype == torch.uint8
    assert torch.equal(first, Augment()(batch, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, Augment()(batch, torch.Generator().manual_seed(2)))
    # only the degradations, always: every view is softer than the original
    soft = Augment(flip=0, scale=(1, 1), shift=0, max_rotation=0, colour=0, grey=0, cutout=0,
                   downscale=1, blur=1, noise=0, jpeg=1)(batch, torch.Generator().manual_seed(0))
    views = soft.permute(0, 2, 3, 1).numpy()
    assert all(sharpness(np.ascontiguousarray(v)) < sharpness(face) for v in views)
    # nothing switched on: the crop comes back unchanged
    none = Augment(flip=0, scale=(1, 1), shift=0, max_rotation=0, colour=0, grey=0, cutout=0,
                   downscale=0, blur=0, noise=0, jpeg=0)(batch, torch.Generator().manual_seed(0))
    assert torch.equal(none, batch)


def test_cutout_blanks_a_band_or_a_half(face):
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = Augment.cut(face.astype(np.float32), rng)
        flat_rows = (out == out[:, :1]).all(axis=(1, 2)).sum()
        flat_cols = (out == out[:1]).all(axis=(0, 2)).sum()
        assert flat_rows >= 0.25 * 224 or flat_cols >= 0.5 * 224


def test_class_balance_gives_real_and_fake_equal_weight():
    labels = np.array([0] * 3 + [1] * 7)
    weights = class_balance_weights(labels)
    assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())
    assert weights.mean() == pytest.approx(1.0)
    assert np.array_equal(class_balance_weights(np.ones(4, int)), np.ones(4))


def test_teacher_trains_at_a_lower_resolution_and_serves_only_at_its_own():
    torch.manual_seed(0)
    model = CrossEfficientViT(**TINY_TEACHER).train()
    small = torch.randn(2, 3, 32, 32)
    assert model(small).shape == (2,)  # maps resized to the patch embedding's size
    model.eval()
    with pytest.raises(ValueError, match="expects"):
        model(small)
    assert model(model.preprocess(np.zeros((2, 50, 50, 3), np.uint8))).shape == (2,)
    assert model.preprocess(np.zeros((1, 50, 50, 3), np.uint8), size=32).shape == (1, 3, 32, 32)


def test_attention_dropout_is_applied_in_training_only():
    torch.manual_seed(0)
    model = CrossEfficientViT(**{**TINY_TEACHER, "dropout": 0.5, "emb_dropout": 0.0})
    attention = model.encoder.layers[0][0].layers[0][0].fn
    x = torch.randn(2, 5, 16)
    attention.train()
    assert not torch.allclose(attention(x), attention(x))
    attention.eval()
    assert torch.allclose(attention(x), attention(x))


def test_reencoded_clips_are_480p_h264_with_every_frame_and_labels(tmp_path, portrait_clip):
    import av

    from deepfake_kd.pipeline.video import sample_frames
    from deepfake_kd.training.evaluate import reencoded_folder

    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "portrait.mp4").write_bytes(portrait_clip.read_bytes())
    (folder / "labels.csv").write_text("file,label\nportrait.mp4,real\n")
    out = reencoded_folder(folder, tmp_path / "480p", short_side=480)
    assert (out / "labels.csv").read_text() == (folder / "labels.csv").read_text()
    with av.open(str(out / "portrait.mp4")) as clip:
        stream = clip.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (480, 640)  # 240x320 scaled, shape kept
    assert len(sample_frames(out / "portrait.mp4", 8).frames) == 8
    made = (out / "portrait.mp4").stat().st_mtime_ns
    reencoded_folder(folder, tmp_path / "480p")  # reused, not made again
    assert (out / "portrait.mp4").stat().st_mtime_ns == made
