"""Inference runtimes: same probabilities as eager, same interface, errors in one line."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.models import ARCHITECTURES
from deepfake_kd.pipeline.runtime import accelerate, batchnorm_pairs, fold_batchnorm
from deepfake_kd.tools.analyze import parse_runtimes


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)


@pytest.mark.parametrize("runtime", ["folded", "eager", "jit", "onnx", "onnx-shared"])
def test_runtimes_match_eager(runtime, tiny_models, crops, tmp_path):
    if runtime.startswith("onnx"):
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    for model in tiny_models.values():
        if runtime == "onnx-shared":  # re-lays out the weights of the model it is given
            model = copy.deepcopy(model)
        fast = accelerate(model, runtime, cache_dir=tmp_path)
        assert fast.num_parameters() == model.num_parameters()
        assert fast.input_size == model.input_size
        with torch.inference_mode():
            want = model.predict_proba(model.preprocess(crops))
            got = fast.predict_proba(fast.preprocess(crops))  # batch 3: any batch size works
            one = fast.predict_proba(fast.preprocess(crops[:1]))
        assert torch.allclose(got, want, atol=1e-5) and torch.allclose(one, want[:1], atol=1e-5)
    if runtime.startswith("onnx"):  # exported once per weights, then loaded from the cache
        assert len(list(tmp_path.glob("*.onnx"))) == len(tiny_models)



def test_onnx_shared_runs_on_the_models_own_weights(tiny_models, crops, tmp_path):
    """onnx-shared: ONNX Runtime reads the eager model's memory instead of a copy of its own:
    every matched weight (the transformer's Linear weights transposed, the rest as stored) is
    one buffer for both, the eager model still gives the same logits, and a second session (the
    export now from the cache) shares the same buffers again. Plain onnx shares nothing."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = copy.deepcopy(tiny_models["teacher"])  # its weights get re-laid out
    with torch.inference_mode():
        before = model(model.preprocess(crops))
    assert accelerate(model, "onnx", cache_dir=tmp_path)._run.shared_weights == {}
    fast = accelerate(model, "onnx-shared", cache_dir=tmp_path)
    shared = fast._run.shared_weights
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    linears = {f"{name}.weight" for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and module.weight.numel() >= 1024}
    assert linears and len(shared) >= len(linears)
    pointers = {value.data_ptr() for value in shared.values()}
    assert all(tensors[key].data_ptr() in pointers for key in linears)
    assert any(not tensors[key].is_contiguous() for key in linears)  # stored transposed
    [export] = tmp_path.glob("*.onnx")
    assert export.with_name(export.name + ".data").is_file()
    again = accelerate(model, "onnx-shared", cache_dir=tmp_path)
    assert {value.data_ptr() for value in again._run.shared_weights.values()} == pointers
    with torch.inference_mode():
        assert torch.allclose(model(model.preprocess(crops)), before, atol=1e-6)
        assert torch.allclose(fast(fast.preprocess(crops)), before, atol=1e-5)
        assert torch.allclose(again(again.preprocess(crops)), before, atol=1e-5)

def test_parse_runtimes():
    roles = ["teacher", "student"]
    assert parse_runtimes(None, roles) == {"teacher": "onnx", "student": "onnx"}
    assert parse_runtimes(["jit"], roles) == {"teacher": "jit", "student": "jit"}
    assert parse_runtimes(["jit", "student=onnx"], roles) == {"teacher": "jit",
                                                              "student": "onnx"}
    with pytest.raises(DeepfakeKDError, match="unknown runtime"):
        parse_runtimes(["tensorrt"], roles)
    with pytest.raises(DeepfakeKDError, match="no model called"):
        parse_runtimes(["pupil=jit"], roles)


def test_int8_needs_calibration_and_stays_close(tiny_models, crops, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    student = tiny_models["student"]
    with pytest.raises(DeepfakeKDError, match="calibration"):
        accelerate(student, "onnx-int8", cache_dir=tmp_path)
    calibration = np.random.default_rng(1).integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    int8 = accelerate(student, "onnx-int8", cache_dir=tmp_path, calibration=calibration)
    with torch.inference_mode():
        want = student.predict_proba(student.preprocess(crops))
        got = int8.predict_proba(int8.preprocess(crops))
    assert int8.runtime == "onnx-int8" and torch.allclose(got, want, atol=0.02)
    assert len(list(tmp_path.glob("*-int8-*.onnx"))) == 1 and not list(tmp_path.glob("*.part*"))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_folding_removes_every_batchnorm_and_keeps_the_scores(name, crops):
    """Every registered architecture folds completely (a norm left over would mean a block whose
    layout `batchnorm_pairs` does not know), with trained-looking statistics, not the identity
    of a fresh BatchNorm; weights outside the folded pairs are shared, not copied."""
    torch.manual_seed(0)
    kwargs = {"backbone": "efficientnet_lite0"} if name in ("cross-efficient-vit",
                                                            "efficientnet-classifier") else {}
    model = ARCHITECTURES[name](**kwargs).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.running_mean.normal_(0, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.2)
        for p in model.parameters():  # no zero-initialised head hiding the trunk
            if p.ndim == 2 and not p.any():
                p.normal_(0, 0.1)
    assert len(batchnorm_pairs(model)) == len(norms) > 0
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = model.preprocess(crops)
    with torch.inference_mode():
        want, got = model(x), folded(x)
    assert want.std() > 1e-5 and torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    kept = {id(p) for p in model.parameters()}
    assert sum(id(p) in kept for p in folded.parameters()) > 0  # shared weights
    assert accelerate(model, "folded").num_parameters() == model.num_parameters()


def test_onnx_without_a_writable_cache_still_runs(tiny_models, crops, tmp_path):
    """A host whose home is read-only: the export is used from memory, with a warning."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    student = tiny_models["student"]
    with pytest.warns(UserWarning, match="cannot cache the ONNX export.*DEEPFAKE_KD_CACHE"):
        fast = accelerate(student, "onnx", cache_dir=blocked / "onnx")
    with torch.inference_mode():
        want = student.predict_proba(student.preprocess(crops))
        assert torch.allclose(fast.predict_proba(fast.preprocess(crops)), want, atol=1e-5)


def test_onnx_runtime_sends_and_stores_no_telemetry(tmp_path):
    """onnxruntime >= 1.29 would write a session file into TMPDIR (and a device id into the
    home) and upload usage events; the runtime imports it with its telemetry off."""
    pytest.importorskip("onnxruntime")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(TMPDIR=str(tmp_path / "tmp"), HOME=str(tmp_path / "home"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "home").mkdir()
    code = ("from deepfake_kd.pipeline.runtime import import_onnxruntime; "
            "ort = import_onnxruntime(); ort.SessionOptions()")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert not list((tmp_path / "tmp").rglob("*")) and not list((tmp_path / "home").rglob("*"))
