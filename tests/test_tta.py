"""Test-time augmentation (`pipeline.tta`): the mean logit of a crop and its mirror, in every
place a model answers: the one interface, any runtime, `evaluate`, `bench`, distillation's
cached teacher targets and the app's models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepfake_kd.cli import main
from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.models import StudentCNN, predict_crops, save_model
from deepfake_kd.pipeline.runtime import accelerate
from deepfake_kd.pipeline.tta import DEFAULT_TTA, FlipAveraged, with_tta
from deepfake_kd.training.data import Augment, load_split
from deepfake_kd.training.metrics import binary_metrics
from tests.conftest import tiny_student, tiny_teacher
from tests.test_training import TINY_STUDENT, training_data


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)


@pytest.mark.parametrize("runtime", ["eager", "onnx"])
def test_flip_is_the_mean_logit_of_the_crop_and_its_mirror(runtime, crops, tmp_path):
    if runtime == "onnx":
        pytest.importorskip("onnxruntime")
    asymmetry = []
    torch.manual_seed(0)  # the same tiny models every run: how asymmetric they are is fixed
    for model in (tiny_teacher().eval(), tiny_student().eval()):
        with torch.no_grad():  # the tiny models' heads start at zero: give them something to say
            for p in model.parameters():
                if p.ndim == 2 and not p.any():  # a zero-initialised linear head
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
        tta = with_tta(accelerate(model, runtime, cache_dir=tmp_path), "flip")
        assert tta.tta == "flip" and tta.runtime == runtime
        assert tta.num_parameters() == model.num_parameters()
        assert tta.input_size == model.input_size and tta.unwrap() is model
        with torch.inference_mode():
            x = model.preprocess(crops)
            want = (model(x) + model(x.flip(-1))) / 2
            got = tta(tta.preprocess(crops))
            mirrored = tta(tta.preprocess(crops[:, :, ::-1].copy()))
            one = tta(tta.preprocess(crops[:1]))  # batch 1 runs as a batch of 2
            plain = model(x)
        assert got.shape == (3,) and torch.allclose(got, want, rtol=1e-4, atol=1e-4)
        assert torch.allclose(mirrored, got, rtol=1e-4, atol=1e-4), (mirrored, got)
        asymmetry.append(float((plain - want).abs().max()))
        assert torch.allclose(one, want[:1], rtol=1e-4, atol=1e-4)
    assert max(asymmetry) > 1e-3  # the mirror changed an answer: the averaging was tested


def test_with_tta_none_is_the_model_and_mistakes_are_one_line(tiny_models):
    student = tiny_models["student"]
    assert with_tta(student, "none") is student
    with pytest.raises(DeepfakeKDError, match="unknown test-time augmentation 'ten-crop'"):
        with_tta(student, "ten-crop")
    with pytest.raises(DeepfakeKDError, match="already test-time augmented"):
        FlipAveraged(FlipAveraged(student))


def test_evaluate_with_flip_against_the_same_weights_without_it(crop_folder, tmp_path):
    """`--tta flip --baseline-tta none` with the model's own weights as the baseline: the
    student's figures are those of the flip-averaged model, the baseline's those of the plain
    one, and their paired difference is reported."""
    save_model(StudentCNN(**TINY_STUDENT), tmp_path / "student")
    report = tmp_path / "report.json"
    assert main(["evaluate", "--roles", "student", "--student", str(tmp_path / "student"),
                 "--baseline", str(tmp_path / "student"), "--tta", "flip", "--baseline-tta",
                 "none", "--manifest", str(crop_folder), "--split", "train", "--no-robustness",
                 "--cache-dir", str(tmp_path / "cache"), "--json", str(report)]) == 0
    written = json.loads(report.read_text())
    assert written["tta"] == "flip" and written["baseline_tta"] == "none"
    crops, labels = load_split(crop_folder, "train", cache_dir=tmp_path / "cache")
    model = StudentCNN.from_pretrained(str(tmp_path / "student"))
    metrics = written["crops"]["metrics"]
    assert metrics["student"]["auc"] == pytest.approx(
        binary_metrics(labels, predict_crops(FlipAveraged(model), crops))["auc"])
    assert metrics["baseline"]["auc"] == pytest.approx(
        binary_metrics(labels, predict_crops(model, crops))["auc"])
    difference = written["paired"]["student - baseline"]["clean"]["auc_difference"]
    assert difference == pytest.approx(metrics["student"]["auc"] - metrics["baseline"]["auc"])


def test_teacher_targets_with_flip_are_cached_apart_and_are_the_mean_of_both(crop_folder,
                                                                             tmp_path):
    from deepfake_kd.training.distill import cached_view_logits
    from deepfake_kd.training.train import ViewFeed

    crops, _ = training_data(crop_folder)
    feed = ViewFeed(crops[:5], Augment(), views=2, seed=1)
    teacher = StudentCNN(**TINY_STUDENT).eval()
    plain = cached_view_logits("in-memory", teacher, feed, tmp_path, log=lambda m: None)
    flip = cached_view_logits("in-memory", with_tta(teacher, "flip"), feed, tmp_path,
                              log=lambda m: None)
    assert len(list(tmp_path.glob("teacher-views-*"))) == 2  # not the plain targets again
    with torch.no_grad():
        for k in range(2):
            x = teacher.preprocess(feed.images(torch.arange(5), torch.full((5,), k)))
            mirrored = teacher(x.flip(-1)).numpy()
            assert np.allclose(flip[:, k], (plain[:, k] + mirrored) / 2, atol=1e-5)


def test_bench_counts_both_passes_and_labels_them(model_dirs, tmp_path, capsys):
    from deepfake_kd.tools.bench import flops_per_face

    model = StudentCNN.from_pretrained(str(model_dirs["student"]))
    assert flops_per_face(with_tta(model, "flip")) == 2 * flops_per_face(model)
    out = tmp_path / "bench.json"
    assert main(["bench", "--teacher", str(model_dirs["teacher"]), "--student",
                 str(model_dirs["student"]), "--runtime", "eager", "--tta", "none",
                 "--repeats", "2", "--warmup", "0", "--batch-sizes", "1", "--clip-repeats", "0",
                 "--explain-repeats", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {m["tta"] for m in report["models"].values()} == {"none"}
    assert "student [eager, tta none]" in capsys.readouterr().out  # not the default: said


def test_the_app_serves_both_models_with_the_tta_the_environment_names(monkeypatch, model_dirs):
    from deepfake_kd.roles import ROLES
    from deepfake_kd.serving.loading import load_app_models
    from deepfake_kd.serving.texts import panel_markdown

    for role in ROLES:
        monkeypatch.setenv(ROLES[role].env, str(model_dirs[role]))
    monkeypatch.setenv("DEEPFAKE_KD_RUNTIME", "eager")
    monkeypatch.delenv("DEEPFAKE_KD_TTA", raising=False)
    loaded = load_app_models()
    assert loaded.ready and {m.tta for m in loaded.models.values()} == {DEFAULT_TTA} == {"flip"}
    assert "**Runs on:** PyTorch, averaged with the mirror image" \
        in panel_markdown("student", loaded, None)
    monkeypatch.setenv("DEEPFAKE_KD_TTA", "none")
    loaded = load_app_models()
    assert {m.tta for m in loaded.models.values()} == {"none"}
    assert "**Runs on:** PyTorch\n" in panel_markdown("student", loaded, None) + "\n"
    monkeypatch.setenv("DEEPFAKE_KD_TTA", "five-crop")
    with pytest.raises(DeepfakeKDError, match="DEEPFAKE_KD_TTA=five-crop: choose one of"):
        load_app_models()


def test_bench_checks_a_runtime_against_eager_with_the_same_tta(crop_folder, tmp_path):
    """`bench --auc-manifest`: a flip-averaged model in ONNX Runtime is compared with the
    flip-averaged eager model, so the difference reported is the runtime's alone."""
    pytest.importorskip("onnxruntime")
    from deepfake_kd.tools.bench import runtime_auc

    torch.manual_seed(0)  # the same model every run
    model = StudentCNN(**TINY_STUDENT).eval()
    with torch.no_grad():  # a head far from symmetric: flip then changes the probabilities
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == 1:
                module.weight.normal_(0, 2, generator=torch.Generator().manual_seed(0))
    served = with_tta(accelerate(model, "onnx", cache_dir=tmp_path), "flip")
    out = runtime_auc({"student": model}, {"student": served}, str(crop_folder), split="train",
                      cache_dir=str(tmp_path / "cache"))["student"]
    crops, _ = load_split(crop_folder, "train", cache_dir=tmp_path / "cache")
    flip_gap = np.abs(predict_crops(served, crops) - predict_crops(model, crops)).max()
    assert out["tta"] == "flip" and out["runtime"] == "onnx"
    assert out["max_abs_prob_difference"] < 1e-4 < flip_gap, flip_gap
