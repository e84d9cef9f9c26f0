"""Frozen-trunk training: cached backbone maps, the prefix shortcut, and what stays frozen."""

import json

import numpy as np
import pytest
import torch

from deepfake_kd.cli import main
from deepfake_kd.models import CrossEfficientViT, EfficientNetClassifier, load_model, save_model
from deepfake_kd.training.backbone_cache import cached_trunk_maps, is_prefix_of, trunk_maps
from tests.test_models import TINY_TEACHER


def teacher_with_shared_prefix() -> CrossEfficientViT:
    torch.manual_seed(0)
    model = CrossEfficientViT(**TINY_TEACHER, backbone="efficientnet_lite0").eval()
    sm = model.sm_embedder.trunk.state_dict()
    lg = model.lg_embedder.trunk
    lg.load_state_dict({k: sm[k] for k in lg.state_dict()})
    return model


def test_prefix_trunk_map_is_the_full_trunks_intermediate():
    model = teacher_with_shared_prefix()
    sm, lg = model.trunks()
    assert is_prefix_of(lg, sm) and not is_prefix_of(sm, lg)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        direct = [sm(x), lg(x)]
    for shared, plain in zip(trunk_maps(model.trunks(), x), direct):
        assert torch.allclose(shared, plain, atol=1e-6)
    with torch.no_grad():  # a changed weight ends the shortcut
        lg.conv_stem.weight.add_(0.1)
    assert not is_prefix_of(lg, sm)


def test_cached_maps_are_computed_once_and_shared_by_models_with_the_same_trunk(tmp_path):
    teacher = teacher_with_shared_prefix()
    crops = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    maps = cached_trunk_maps(teacher, crops, cache_dir=tmp_path, batch_size=2, progress=False)
    assert [m.shape for m in maps] == [(5, 1280, 2, 2), (5, 24, 16, 16)]
    assert maps[0].dtype == np.float16
    with torch.no_grad():
        x = teacher.preprocess(crops)
        expected = teacher.forward_from_features(*[torch.from_numpy(np.array(m)).float()
                                                   for m in maps])
        assert torch.allclose(expected, teacher(x), atol=1e-2)
    files = sorted(tmp_path.glob("maps-*.npy"))
    assert len(files) == 2
    baseline = EfficientNetClassifier(image_size=64)
    baseline.trunk.load_state_dict(teacher.sm_embedder.trunk.state_dict())
    (again,) = cached_trunk_maps(baseline, crops, cache_dir=tmp_path, progress=False)
    assert sorted(tmp_path.glob("maps-*.npy")) == files
    assert np.array_equal(again, maps[0])


def test_freeze_names_an_unknown_prefix(tmp_path, crop_folder):
    from deepfake_kd.errors import DeepfakeKDError
    from deepfake_kd.training.train import freeze_prefixes

    with pytest.raises(DeepfakeKDError, match="no parameter .* starts with encoder.nothing"):
        freeze_prefixes(teacher_with_shared_prefix(), ["encoder.nothing"])


def test_train_teacher_on_frozen_trunks_changes_only_the_transformer(tmp_path, crop_folder):
    start = teacher_with_shared_prefix()
    save_model(start, tmp_path / "start")
    out = tmp_path / "run"
    assert main(["train-teacher", "--manifest", str(crop_folder), "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out), "--batch-size", "8", "--epochs",
                 "1", "--lr", "1e-2", "--from-model", str(tmp_path / "start"),
                 "--freeze", "sm_embedder", "lg_embedder", "encoder.layers.0.0"]) == 0
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    before = start.state_dict()
    changed = {k for k in before if not torch.equal(before[k], saved[k])}
    assert changed, "nothing trained"
    assert all(k.startswith(("encoder.", "sm_head.", "lg_head.")) for k in changed), changed
    assert not any(k.startswith("encoder.layers.0.0") for k in changed), changed
    assert json.loads((out / "history.json").read_text())[-1]["step"] > 0
    assert isinstance(load_model(str(out / "best")), CrossEfficientViT)


def test_pooled_pca_embedding_sees_only_the_pooled_map():
    from deepfake_kd.training.train import init_embedding_as_pooled_pca

    teacher = teacher_with_shared_prefix()
    embedder = teacher.sm_embedder
    maps = np.random.default_rng(0).gamma(1.0, size=(40, 1280, 2, 2)).astype(np.float16)
    kept = init_embedding_as_pooled_pca(embedder, maps, batch_size=16)
    assert 0.0 < kept <= 1.0
    x = torch.from_numpy(maps.astype(np.float32))

    def tokens(fmap):
        with torch.no_grad():
            return embedder.to_patch_embedding(fmap.permute(0, 2, 3, 1).reshape(len(fmap), -1))

    shuffled = x.flatten(2)[:, :, torch.tensor([3, 1, 0, 2])].reshape(x.shape)
    assert torch.allclose(tokens(x), tokens(shuffled), atol=1e-4)  # where evidence sits: pooled
    assert tokens(x).mean(0).abs().max() < 1e-3  # centred on the maps it was fitted to
    top = tokens(x)[:, 0].var() / tokens(x)[:, -1].var()
    assert top > 1  # leading principal direction first
