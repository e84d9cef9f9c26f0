"""Heatmaps (`pipeline.explain`): a model trained here to react to a bright square in one corner
is seen looking at that corner; untrained weights look elsewhere; both released architectures
(tiny configs) give crop-sized 0-1 heatmaps through the one interface; the agreement measure;
explaining a whole analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.models import CrossEfficientViT, FaceClassifier, StudentCNN, TinyEfficientNet
from deepfake_kd.pipeline.analysis import analyze_video
from deepfake_kd.pipeline.explain import (
    agreement,
    combine,
    explain_crops,
    explain_result,
    faces_at,
    most_suspicious,
    side_by_side,
    spearman,
)
from deepfake_kd.pipeline.runtime import accelerate
from deepfake_kd.pipeline.tta import with_tta
from tests.test_models import TINY_TEACHER

CROP = 64  # the corner test's crops; the models see them at 32x32
SQUARE = CROP // 8  # the bright square, at (4, 4) in the top-left corner


def noise_crops(count: int, *, square: bool, seed: int) -> np.ndarray:
    crops = np.random.default_rng(seed).integers(40, 200, (count, CROP, CROP, 3), dtype=np.uint8)
    if square:
        crops[:, 4:4 + SQUARE, 4:4 + SQUARE] = 255
    return crops


def randomise_heads(model: FaceClassifier, seed: int = 1) -> FaceClassifier:
    """The architectures start their logit layers at zero (p = 0.5), which makes every gradient,
    and so every heatmap, zero: give them random weights to have something to explain."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == 1:
            nn.init.normal_(module.weight, std=0.5)
    return model.eval()


def corner_detector(make) -> FaceClassifier:
    """`make()` trained to say "fake" exactly when the bright square is in the corner."""
    torch.manual_seed(0)
    model = make().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    labels = torch.tensor([1.0] * 16 + [0.0] * 16)
    for step in range(80):
        crops = np.concatenate([noise_crops(16, square=True, seed=2 * step),
                                noise_crops(16, square=False, seed=2 * step + 1)])
        loss = nn.functional.binary_cross_entropy_with_logits(model(model.preprocess(crops)),
                                                              labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


ARCHITECTURES = {  # trunks() (the released student's architecture) and the last-Conv2d fallback
    "trunks": lambda: TinyEfficientNet(image_size=32, num_stages=2, head_channels=16),
    "last-conv": lambda: StudentCNN(image_size=32, widths=(8, 16)),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def trained(request):
    return request.param, corner_detector(ARCHITECTURES[request.param])


def test_a_model_that_reacts_to_a_corner_square_looks_at_that_corner(trained):
    _, model = trained
    positives, negatives = (noise_crops(8, square=s, seed=1000) for s in (True, False))
    explained = explain_crops(model, positives)
    assert explained.probs.min() > 0.9  # it learnt the task...
    assert explain_crops(model, negatives).probs.max() < 0.1
    heatmaps = explained.heatmaps
    half = CROP // 2
    for heatmap in heatmaps:  # ...and looks where the square is
        y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert x < half and y < half, f"peak at ({x}, {y}), not in the top-left corner"
        assert heatmap[:half, :half].sum() > 0.6 * heatmap.sum()


def test_untrained_weights_look_elsewhere(trained):
    kind, model = trained
    crops = noise_crops(8, square=True, seed=1000)
    torch.manual_seed(1)
    untrained = randomise_heads(ARCHITECTURES[kind]())
    ours, theirs = explain_crops(model, crops).heatmaps, explain_crops(untrained, crops).heatmaps
    scores = [agreement(a, b) for a, b in zip(ours, theirs)]
    # A heatmap that did not depend on the weights (an edge detector) would correlate near 1.
    # Random convolutions still react to the square's edges, so the plain CNN's untrained maps
    # keep some resemblance (about 0.36 here; 0.0 for the EfficientNet trunk's).
    assert np.mean([0.0 if s is None else s for s in scores]) < 0.5, scores
    assert not np.allclose(ours, theirs, atol=0.1)


# --- both released architectures, tiny configs ------------------------------------------------

RELEASED = {
    "teacher": (lambda: CrossEfficientViT(**TINY_TEACHER, backbone="efficientnet_lite0"),
                ["1280x2x2", "24x16x16"]),
    "student": (lambda: TinyEfficientNet(image_size=64), ["80x4x4"]),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_architectures_give_crop_sized_heatmaps_in_0_1(name):
    make, maps = RELEASED[name]
    model = randomise_heads(make())
    crops = np.random.default_rng(0).integers(0, 256, (10, 224, 224, 3), dtype=np.uint8)
    explained = explain_crops(model, crops)  # batches of 8 and 2
    heatmaps = explained.heatmaps
    assert heatmaps.shape == (10, 224, 224) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and np.allclose(heatmaps.max(axis=(1, 2)), 1)
    assert explained.maps == maps
    assert explained.shares.shape == (10, len(maps))
    assert np.allclose(explained.shares.sum(axis=1), 1)
    # the heatmaps' forward pass (trunks, then forward_from_features) is the model's own
    expected = model.predict_proba(model.preprocess(crops)).numpy()
    assert np.allclose(explained.probs, expected, atol=1e-6)
    assert not any(p.grad is not None for p in model.parameters())  # nothing left behind
    assert not model.training


def test_the_teacher_weighs_its_branches_by_their_evidence():
    small, large = torch.zeros(1, 2, 2), torch.zeros(1, 4, 4)
    small[0, 0, 0] = 3.0  # evidence 3, top-left
    large[0, 3, 3] = 1.0  # evidence 1, bottom-right
    heatmap, shares = combine([small, large], 8)
    assert shares.tolist() == [[0.75, 0.25]]
    # each branch's map alone, as a distribution over the crop, weighted by its evidence
    alone = [combine([cam], 8)[0] for cam in (small, large)]
    expected = 3 * alone[0] / alone[0].sum() + 1 * alone[1] / alone[1].sum()
    assert torch.allclose(heatmap, expected / expected.max())
    with_empty, _ = combine([small, torch.zeros(1, 4, 4)], 8)
    assert torch.allclose(with_empty, alone[0])  # a branch without evidence adds nothing


def test_no_evidence_gives_an_all_zero_heatmap_and_no_agreement():
    model = TinyEfficientNet(image_size=32, num_stages=2, head_channels=8).eval()  # zero head
    crops = noise_crops(2, square=True, seed=0)
    explained = explain_crops(model, crops)
    assert not explained.heatmaps.any() and not explained.shares.any()
    assert agreement(explained.heatmaps[0], explained.heatmaps[1]) is None


def test_a_runtime_wrapper_is_explained_on_its_eager_model():
    model = corner_detector(ARCHITECTURES["trunks"])
    crops = noise_crops(3, square=True, seed=5)
    wrapped = accelerate(model, "jit")
    assert np.allclose(explain_crops(wrapped, crops).heatmaps, explain_crops(model, crops).heatmaps)


def test_a_flip_averaged_model_is_explained_as_it_answers(trained):
    """With flip, a face and its mirror get mirrored heatmaps and the probability of the mean
    logit; the corner detector's mirrored pass, mirrored back, still points at the square."""
    _, model = trained
    flip = with_tta(model, "flip")
    crops = noise_crops(4, square=True, seed=7)
    explained = explain_crops(flip, crops)
    mirror = explain_crops(flip, np.ascontiguousarray(crops[:, :, ::-1]))
    assert np.allclose(mirror.heatmaps, explained.heatmaps[:, :, ::-1], atol=1e-4)
    with torch.no_grad():
        assert np.allclose(explained.probs, flip.predict_proba(flip.preprocess(crops)).numpy(),
                           atol=1e-5)
    assert not np.allclose(explained.heatmaps, explain_crops(model, crops).heatmaps, atol=1e-3)
    half = CROP // 2
    for heatmap in explained.heatmaps:
        assert heatmap[:half, :half].sum() > 0.5 * heatmap.sum()
    teacher = with_tta(randomise_heads(CrossEfficientViT(**TINY_TEACHER)), "flip")
    shares = explain_crops(teacher, noise_crops(2, square=False, seed=8)).shares
    assert shares.shape == (2, 2) and np.allclose(shares.sum(axis=1), 1, atol=1e-5)


def test_a_model_without_maps_is_refused_with_the_fix():
    class Linear(FaceClassifier):
        def __init__(self):
            super().__init__(input_size=8, mean=(0, 0, 0), std=(1, 1, 1))
            self.fc = nn.Linear(3 * 8 * 8, 1)

        def forward(self, x):
            return self.fc(x.flatten(1)).squeeze(-1)

    with pytest.raises(DeepfakeKDError, match="neither trunks.*forward_from_features"):
        explain_crops(Linear(), noise_crops(1, square=False, seed=0))


# --- agreement --------------------------------------------------------------------------------

def test_spearman():
    a = np.array([1.0, 2.0, 2.0, 3.0])
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(4.5 / np.sqrt(22.5))
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)  # ranks only
    assert spearman(a, np.ones(4)) is None
    rng = np.random.default_rng(0)
    heatmap = rng.random((224, 224))
    assert agreement(heatmap, heatmap) == pytest.approx(1.0)
    assert abs(agreement(heatmap, rng.random((112, 112)))) < 0.1  # any sizes, unrelated


# --- a whole analysis -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def analysed(face_clip, tiny_models, detector):
    models = {name: randomise_heads(model) if isinstance(model, CrossEfficientViT) else model
              for name, model in tiny_models.items()}
    return analyze_video(face_clip, models, num_frames=12, detector=detector), models


def test_explaining_the_most_suspicious_faces_of_a_clip(analysed):
    result, models = analysed
    chosen = most_suspicious(result, 4)
    worst = [max(face.probs.values()) for face in result.faces]
    assert [worst[i] for i in chosen] == sorted(worst, reverse=True)[:4]
    explanation = explain_result(result, models, chosen)
    assert explanation.models == ["teacher", "student"]
    assert [face.face for face in explanation.faces] == chosen
    for face in explanation.faces:
        assert set(face.heatmaps) == {"teacher", "student"}
        assert face.probs == result.faces[face.face].probs
        assert face.agreement == agreement(face.heatmaps["teacher"], face.heatmaps["student"])
        assert side_by_side(face).shape == (224, 3 * 224 + 2 * 4, 3)
    defined = [face.agreement for face in explanation.faces if face.agreement is not None]
    assert explanation.mean_agreement == pytest.approx(np.mean(defined))
    data = json.loads(json.dumps(explanation.to_dict()))
    assert "heatmaps" not in data["faces"][0] and "crop" not in data["faces"][0]
    assert data["maps"]["teacher"] == ["1280x7x7", "24x56x56"]
    assert set(data["seconds"]) == {"teacher", "student"}


def test_faces_at_a_time_are_the_nearest_frame_with_a_face(analysed):
    result, _ = analysed
    first, last = result.faces[0], result.faces[-1]
    assert [result.faces[i].frame_index for i in faces_at(result, 0.0)] == [first.frame_index]
    assert [result.faces[i].frame_index for i in faces_at(result, 99.0)] == [last.frame_index]
    middle = result.faces[3]
    assert faces_at(result, middle.timestamp + 0.01) == [3]
