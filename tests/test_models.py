"""Both models: shapes, parameter budgets, the shared interface, and safetensors persistence."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_kd.errors import ModelNotFoundError, WeightsError
from deepfake_kd.models import (
    CrossEfficientViT,
    EfficientNetClassifier,
    StudentCNN,
    TinyEfficientNet,
    load_model,
    save_model,
    weights_folder,
)
from deepfake_kd.models.weights import split_reference
from deepfake_kd.roles import default_reference

TINY_TEACHER = dict(image_size=64, sm_patch_size=2, lg_patch_size=16, depth=1, sm_dim=16,
                    lg_dim=16, sm_enc_depth=1, lg_enc_depth=1, sm_enc_mlp_dim=32,
                    lg_enc_mlp_dim=32, sm_enc_heads=2, lg_enc_heads=2, cross_attn_heads=2,
                    sm_enc_dim_head=8, lg_enc_dim_head=8, cross_attn_dim_head=8,
                    cross_attn_depth=1)


@pytest.fixture(scope="module")
def paper_teacher():
    return CrossEfficientViT().eval()


def test_paper_teacher_parameter_count(paper_teacher):
    # Everything the paper's model uses in forward; its 101.4M also counts two ImageNet heads
    # (2 x 1.28M) and the unused tail of the second backbone (~3.8M), built here not at all.
    assert 93_000_000 < paper_teacher.num_parameters() < 96_000_000


@pytest.mark.parametrize("student", [TinyEfficientNet, StudentCNN])
def test_student_is_at_most_half_a_percent_of_the_teacher(paper_teacher, student):
    ratio = student().num_parameters() / paper_teacher.num_parameters()
    assert ratio <= 0.005


def test_teacher_branches_have_the_paper_shapes(paper_teacher):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert paper_teacher.sm_embedder.trunk(x).shape == (2, 1280, 7, 7)
        assert paper_teacher.lg_embedder.trunk(x).shape == (2, 24, 56, 56)
        assert paper_teacher(x).shape == (2,)


@pytest.mark.parametrize("model", [TinyEfficientNet(), StudentCNN(),
                                   CrossEfficientViT(**TINY_TEACHER),
                                   EfficientNetClassifier(image_size=64)],
                         ids=["student", "plain-cnn", "tiny-teacher", "baseline"])
def test_one_interface(model):
    model.eval()
    crops = np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
    x = model.preprocess(crops)
    assert x.shape == (3, 3, model.input_size, model.input_size) and x.dtype == torch.float32
    logits = model(x)
    assert logits.shape == (3,)
    probs = model.predict_proba(x)
    assert torch.allclose(probs, torch.sigmoid(logits.detach()))
    assert ((probs >= 0) & (probs <= 1)).all()
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(1, 3, model.input_size + 1, model.input_size + 1))
    # the forward pass split at the features the logit is linear in (feature distillation's)
    with torch.no_grad():
        for head in model.modules():  # zero-initialised heads would hide a wrong split
            if isinstance(head, torch.nn.Linear) and head.out_features == 1:
                torch.nn.init.normal_(head.weight)
        features = model.pre_logits(x)
        assert features.ndim == 2 and len(features) == 3
        assert torch.allclose(model.classify(features), model(x), atol=1e-5)
        # linear: the logits of a mix of features are the mix of the logits
        mixed = model.classify(0.25 * features + 0.75 * features.flip(0))
        assert torch.allclose(mixed, 0.25 * model(x) + 0.75 * model(x).flip(0), atol=1e-4)


def test_preprocess_reads_size_and_normalisation_from_the_config():
    model = StudentCNN(image_size=48, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    white = np.full((1, 100, 100, 3), 255, dtype=np.uint8)
    x = model.preprocess(white)
    assert x.shape == (1, 3, 48, 48)
    assert torch.allclose(x, torch.ones_like(x))


@pytest.mark.parametrize("make", [lambda: TinyEfficientNet(image_size=64),
                                  lambda: StudentCNN(widths=(4, 8, 16)),
                                  lambda: CrossEfficientViT(**TINY_TEACHER)],
                         ids=["student", "plain-cnn", "teacher"])
def test_save_load_round_trip_gives_identical_outputs(make, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == type(model).__name__
    assert not list((tmp_path / "m").glob("*.bin"))
    loaded = load_model(str(tmp_path / "m"))
    assert type(loaded) is type(model) and not loaded.training
    x = torch.randn(2, 3, model.input_size, model.input_size)
    assert torch.equal(model(x), loaded(x))


def test_fp16_shards_load_into_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr("deepfake_kd.models.weights.MAX_SHARD_BYTES", 50_000)
    torch.manual_seed(0)
    model = StudentCNN(widths=(8, 16, 32, 64)).eval()
    save_model(model.half(), tmp_path / "m")
    shards = sorted((tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "m" / "model.safetensors.index.json").is_file()
    assert max(p.stat().st_size for p in shards) < 50_000 + 10_000  # + the header
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert any(".__part" in key for key in index["weight_map"])  # the 64x64x3x3 convs split
    loaded = load_model(str(tmp_path / "m"))
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(2, 3, 112, 112)
    assert torch.allclose(model.float()(x), loaded(x), atol=1e-5)


def test_strict_loading_rejects_a_wrong_checkpoint(tmp_path):
    save_model(StudentCNN(widths=(4, 8)), tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["widths"] = [4, 8, 16]  # a config that no longer matches the weights
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="do not match StudentCNN.*missing"):
        load_model(str(tmp_path / "m"))


def test_a_missing_shard_and_a_corrupt_file_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr("deepfake_kd.models.weights.MAX_SHARD_BYTES", 20_000)
    save_model(StudentCNN(widths=(8, 16, 32)), tmp_path / "m")
    shards = sorted((tmp_path / "m").glob("model-*.safetensors"))
    shutil.copytree(tmp_path / "m", tmp_path / "corrupt")
    shards[0].unlink()
    with pytest.raises(WeightsError, match=f"{shards[0].name}.*missing"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "corrupt" / shards[1].name).write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model(str(tmp_path / "corrupt"))


def test_pickle_weights_are_refused(tmp_path):
    save_model(StudentCNN(widths=(4, 8)), tmp_path / "m")
    torch.save({"x": torch.zeros(1)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="refusing pickle"):
        load_model(str(tmp_path / "m"))


def test_a_config_key_the_class_does_not_take_is_named(tmp_path):
    save_model(StudentCNN(widths=(4, 8)), tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "width_multiplier": 2}))
    with pytest.raises(WeightsError, match="StudentCNN takes no key width_multiplier"):
        load_model(str(tmp_path / "m"))


def test_channel_counts_come_from_the_trunk_and_old_configs_still_load(tmp_path):
    """sm_channels / lg_channels (and the baseline's features) are derived from the trunks;
    a config of an earlier release that states them loads when they agree, and is refused,
    naming the key, when they do not."""
    teacher = CrossEfficientViT(backbone="efficientnet_lite0", **TINY_TEACHER)
    assert teacher.derived_config() == {"sm_channels": 1280, "lg_channels": 24}
    assert EfficientNetClassifier().derived_config() == {"features": 1280}
    save_model(teacher, tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    assert "sm_channels" not in config and "lg_channels" not in config
    config_path.write_text(json.dumps({**config, "sm_channels": 1280, "lg_channels": 24}))
    assert isinstance(load_model(str(tmp_path / "m")), CrossEfficientViT)
    config_path.write_text(json.dumps({**config, "sm_channels": 1280, "lg_channels": 40}))
    with pytest.raises(WeightsError, match="lg_channels is 40.*has 24"):
        load_model(str(tmp_path / "m"))


def test_released_weights_load_with_their_bundled_configs():
    root = Path(__file__).resolve().parents[1] / "weights"
    for role, cls in (("teacher", CrossEfficientViT), ("student", TinyEfficientNet)):
        if (root / role / "config.json").is_file():
            assert isinstance(load_model(str(root / role)), cls)


# ------------------------------------------------------------------ resolving references

def test_reference_parsing():
    assert split_reference("owner/name@v1") == ("owner/name", "v1")
    assert split_reference("owner/name") == ("owner/name", None)


def test_default_reference_is_bundled_unless_the_environment_names_one(monkeypatch):
    monkeypatch.delenv("DEEPFAKE_KD_STUDENT", raising=False)
    assert Path(default_reference("student")).parts[-2:] == ("weights", "student")
    monkeypatch.setenv("DEEPFAKE_KD_STUDENT", "someone/student@main")
    assert default_reference("student") == "someone/student@main"


def fill_hub_cache(cache: Path, repo_id: str, source: Path, *, commit: str, ref: str = "main"):
    """Lay out `source` the way huggingface_hub caches a downloaded snapshot."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)


def test_repo_id_is_served_from_a_prefilled_cache_offline(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = StudentCNN(widths=(4, 8)).eval()
    save_model(model, tmp_path / "src")
    fill_hub_cache(tmp_path / "hub", "someone/tiny-student", tmp_path / "src", commit="a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("someone/tiny-student", cache_dir=tmp_path / "hub")
    x = torch.randn(1, 3, 112, 112)
    assert torch.equal(loaded(x), model(x))
    pinned = load_model(f"someone/tiny-student@{'a' * 40}", cache_dir=tmp_path / "hub")
    assert torch.equal(pinned(x), model(x))


def test_missing_model_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        weights_folder("nobody/no-such-model@v1", cache_dir=tmp_path)
    message = str(info.value)
    assert "local folder" in message and "Hub cache" in message and "nobody/no-such-model@v1" in message
    with pytest.raises(ModelNotFoundError, match="not a valid repo id"):
        weights_folder(str(tmp_path / "not" / "here"))
