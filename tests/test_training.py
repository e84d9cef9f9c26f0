"""Training, distillation and metrics, on tiny models and crops the tests make themselves."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from deepfake_kd.cli import main
from deepfake_kd.errors import DeepfakeKDError
from deepfake_kd.models import StudentCNN, load_model
from deepfake_kd.training.data import Augment, decode_crop, load_crops, read_samples
from deepfake_kd.training.distill import distillation_loss
from deepfake_kd.training.metrics import binary_metrics, paired_auc_difference, roc_auc
from deepfake_kd.training.train import CropFeed, FitConfig, fit, hard_loss, schedule
from deepfake_kd.util import fork_map, keep_freed_heap, usable_cpus

TINY_STUDENT = {"widths": [4, 8], "image_size": 32}
TINY_EFFICIENTNET = {"num_stages": 2, "head_channels": 8, "image_size": 32}
TINY_TEACHER = {"image_size": 64, "sm_patch_size": 2, "lg_patch_size": 16, "depth": 1,
                "sm_dim": 16, "lg_dim": 16, "sm_enc_depth": 1, "lg_enc_depth": 1,
                "sm_enc_mlp_dim": 32, "lg_enc_mlp_dim": 32, "sm_enc_heads": 2, "lg_enc_heads": 2,
                "cross_attn_heads": 2, "sm_enc_dim_head": 8, "lg_enc_dim_head": 8,
                "cross_attn_dim_head": 8, "cross_attn_depth": 1, "backbone": "efficientnet_lite0"}


# ------------------------------------------------------------------ distillation loss

def test_kd_loss_of_a_sample_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    s, t = torch.randn(8), torch.randn(8)
    y = (torch.rand(8) > 0.5).float()
    full = distillation_loss(s, t, y, alpha=0.3, temperature=4.0)
    for i in range(8):
        alone = distillation_loss(s[i:i + 1], t[i:i + 1], y[i:i + 1], alpha=0.3, temperature=4.0)
        assert torch.allclose(full[i], alone[0])
    other = distillation_loss(torch.cat([s[:1], 10 * torch.randn(5)]),
                              torch.cat([t[:1], 10 * torch.randn(5)]),
                              torch.cat([y[:1], torch.ones(5)]), alpha=0.3, temperature=4.0)
    assert torch.allclose(full[0], other[0])


@pytest.mark.parametrize("temperature", [1.0, 3.0, 8.0])
def test_soft_loss_is_minimal_where_tempered_probabilities_match(temperature):
    teacher = torch.full((401,), 1.7)
    student = torch.linspace(-6, 6, 401)
    soft = distillation_loss(student, teacher, torch.zeros(401), alpha=0.0,
                             temperature=temperature)
    best = student[soft.argmin()]
    assert abs(best.item() - 1.7) <= 12 / 400 + 1e-6


def test_t_squared_keeps_gradient_size_comparable_across_temperatures():
    teacher = torch.tensor([0.5, -1.0, 2.0])
    grads = {}
    for temperature in (2.0, 4.0, 8.0, 16.0):
        student = torch.tensor([1.5, 0.0, 0.5], requires_grad=True)
        distillation_loss(student, teacher, torch.zeros(3), alpha=0.0,
                          temperature=temperature).sum().backward()
        grads[temperature] = student.grad.norm().item()
    assert max(grads.values()) / min(grads.values()) < 1.5, grads
    # without T^2 the gradient would shrink like 1/T^2: 64x from T=2 to T=16
    assert grads[16.0] > 0.5 * grads[2.0]


def test_alpha_one_is_plain_bce():
    s, t, y = torch.randn(5), torch.randn(5), (torch.rand(5) > 0.5).float()
    assert torch.allclose(distillation_loss(s, t, y, alpha=1.0, temperature=4.0),
                          hard_loss({"logit": s}, {"label": y}))


# ------------------------------------------------------------------ metrics

def test_metrics_match_hand_computed_values():
    labels, probs = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    m = binary_metrics(labels, probs)
    assert m["auc"] == pytest.approx(0.75)  # 3 of the 4 (fake, real) pairs ordered right
    assert m["accuracy"] == pytest.approx(0.75)  # 0.35 is the one mistake at 0.5
    assert m["f1"] == pytest.approx(2 / 3)  # tp=1, fp=0, fn=1
    expected = -np.mean(np.log([0.9, 0.6, 0.35, 0.8]))
    assert m["log_loss"] == pytest.approx(expected)


def test_auc_counts_ties_as_half():
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1], [0.2, 0.6, 0.6]) == pytest.approx(0.75)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_schedule_warms_up_then_decays_to_zero():
    assert schedule(0.0, 0.1) < schedule(0.05, 0.1) < schedule(0.1, 0.1) == pytest.approx(1.0)
    assert schedule(0.55, 0.1) == pytest.approx(0.5)
    assert schedule(1.0, 0.1) == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------ data

def test_folder_dataset_and_crop_cache(crop_folder, tmp_path):
    root, samples = read_samples(crop_folder)
    assert len(samples) == 48 and {s.label for s in samples} == {0, 1}
    assert {s.split for s in samples} <= {"train", "val"}
    crops = load_crops(root, samples, cache_dir=tmp_path)
    assert crops.shape == (48, 224, 224, 3) and crops.dtype == np.uint8
    assert len(list(tmp_path.glob("crops-*.npy"))) == 1
    for i in (0, 31, 47):  # decoded in worker processes, in order
        assert np.array_equal(crops[i], decode_crop(root / samples[i].file))
    again = load_crops(root, samples, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(again), crops)


def test_augment_keeps_shape_and_type_and_changes_pixels(crop_folder):
    root, samples = read_samples(crop_folder)
    batch = torch.from_numpy(np.asarray(load_crops(root, samples[:8]))).permute(0, 3, 1, 2)
    out = Augment(jpeg=1.0, noise=1.0)(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert (out.float() - batch.float()).abs().mean() > 1.0


# ------------------------------------------------------------------ the loop

def training_data(crop_folder):
    root, samples = read_samples(crop_folder)
    crops = np.asarray(load_crops(root, samples))
    labels = np.array([s.label for s in samples])
    return crops, labels


def test_a_few_steps_lower_the_loss(crop_folder, tmp_path):
    crops, labels = training_data(crop_folder)
    torch.manual_seed(0)
    model = StudentCNN(**TINY_STUDENT, dropout=0.0)

    def loss_now():
        model.eval()
        with torch.no_grad():
            logits = model(model.preprocess(crops))
        return hard_loss({"logit": logits}, {"label": torch.tensor(labels).float()}).mean().item()

    before = loss_now()
    fit(model, train=CropFeed(crops, augment=Augment(flip=0.0, jpeg=0.0, noise=0.0)),
        train_targets={"label": labels}, val=CropFeed(crops), val_labels=labels,
        out_dir=tmp_path, progress=False, log=lambda m: None,
        config=FitConfig(batch_size=16, lr=1e-2, epochs=6))
    assert loss_now() < before
    best = load_model(str(tmp_path / "best"))
    assert isinstance(best, StudentCNN)
    assert json.loads((tmp_path / "history.json").read_text())[-1]["step"] == 18


def test_fewer_items_than_one_batch_is_an_error_not_an_endless_loop(crop_folder, tmp_path):
    crops, labels = training_data(crop_folder)
    with pytest.raises(DeepfakeKDError, match="fewer than one batch.*--batch-size"):
        fit(StudentCNN(**TINY_STUDENT), train=CropFeed(crops), train_targets={"label": labels},
            val=CropFeed(crops), val_labels=labels, out_dir=tmp_path, progress=False,
            log=lambda m: None, config=FitConfig(batch_size=len(crops) + 1, epochs=1))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_training_resumes_from_its_checkpoint(crop_folder, tmp_path):
    crops, labels = training_data(crop_folder)
    messages = []
    common = dict(train=CropFeed(crops, augment=Augment()), train_targets={"label": labels},
                  val=CropFeed(crops), val_labels=labels, out_dir=tmp_path, progress=False,
                  log=messages.append)
    first = fit(StudentCNN(**TINY_STUDENT), config=FitConfig(batch_size=16, epochs=1), **common)
    assert first.step == 3
    second = fit(StudentCNN(**TINY_STUDENT), config=FitConfig(batch_size=16, epochs=2), **common)
    assert any(m.startswith("resumed from") and "at step 3" in m for m in messages)
    assert second.step == 6 and len(second.history) == 2


def test_train_teacher_and_distill_commands_end_to_end(crop_folder, tmp_path):
    tiny_teacher = json.dumps({k: v for k, v in TINY_TEACHER.items() if k != "backbone"})
    common = ["--manifest", str(crop_folder), "--cache-dir", str(tmp_path / "cache"),
              "--batch-size", "8", "--epochs", "0.25"]
    assert main(["train-teacher", *common, "--out", str(tmp_path / "teacher"), "--init", "none",
                 "--backbone", "efficientnet_lite0", "--model-kwargs", tiny_teacher]) == 0
    assert (tmp_path / "teacher" / "best" / "config.json").is_file()
    for alpha, mixed, feature in (("0.5", "0", "0"), ("1.0", "0", "0"), ("0.5", "2", "0"),
                                  ("0.5", "0", "0.5")):
        out = tmp_path / f"student-{alpha}-{mixed}-{feature}"
        assert main(["distill", *common, "--teacher", str(tmp_path / "teacher" / "best"),
                     "--out", str(out), "--alpha", alpha, "--temperature", "3",
                     "--mixed-views", mixed, "--feature-weight", feature,
                     "--model-kwargs", json.dumps(TINY_EFFICIENTNET)]) == 0
        result = json.loads((out / "result.json").read_text())
        assert result["alpha"] == float(alpha) and 0.0 <= result["val"]["auc"] <= 1.0
        assert result["views"] == 4 and result["mixed_views"] == int(mixed)
        assert result["feature_weight"] == float(feature)
    # the teacher's features (16 + 16 dims) of the 4 views, computed for the feature run only
    features = list((tmp_path / "cache").glob("teacher-features-*/view*.npy"))
    assert len(features) == 4 and np.load(features[0]).shape[1] == 32
    # the teacher scored each of the 4 views once (one chunk each), and only once; adding two
    # blends scored only the blends
    assert len(list((tmp_path / "cache").glob("teacher-views-*/view*.npy"))) == 4
    assert len(list((tmp_path / "cache").glob("teacher-views-*/mixup*.npy"))) == 2


def test_view_feed_makes_each_view_again_and_says_which_it_drew(crop_folder):
    from deepfake_kd.training.train import ViewFeed

    crops, _ = training_data(crop_folder)
    feed = ViewFeed(crops[:6], Augment(), views=3, seed=5)
    index, view = torch.arange(6), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(feed.images(index, view), feed.images(index, view))
    assert not torch.equal(feed.images(index, torch.zeros(6, dtype=torch.long)),
                           feed.images(index, torch.ones(6, dtype=torch.long)))
    model = StudentCNN(**TINY_STUDENT).eval()
    outputs, drawn = feed.outputs(model, index, torch.Generator().manual_seed(0))
    assert drawn.shape == (6,) and set(drawn.tolist()) <= {0, 1, 2}
    with torch.no_grad():
        assert torch.allclose(outputs["logit"], model(model.preprocess(feed.images(index, drawn))))


def test_view_feed_makes_a_large_batch_in_worker_processes_as_it_would_alone(crop_folder):
    """The teacher's chunks of views are made by forked workers (fork_map): the same pixels as
    a step's batch made in this process, view by view."""
    from deepfake_kd.training.train import ViewFeed

    crops, _ = training_data(crop_folder)
    feed = ViewFeed(crops, Augment(), views=3, seed=2)
    index = torch.arange(520) % len(crops)
    view = torch.arange(520) % 3
    together = feed.images(index, view)  # 520 >= 512: the forked path
    alone = torch.cat([feed.images(index[i:i + 40], view[i:i + 40]) for i in range(0, 520, 40)])
    assert torch.equal(together, alone)


def test_fork_map_returns_every_item_in_order_from_several_processes():
    offset = np.arange(100) * 3  # read by the workers without being sent to them
    def job(i):
        time.sleep(0.002)  # long enough that one worker cannot take every chunk
        return int(offset[i]) + 1, os.getpid()

    out = fork_map(job, 100, workers=3, chunk=7)
    assert [value for value, _ in out] == [3 * i + 1 for i in range(100)]
    assert len({pid for _, pid in out}) > 1 and os.getpid() not in {pid for _, pid in out}
    assert fork_map(lambda i: os.getpid(), 5, workers=1) == [os.getpid()] * 5
    assert fork_map(lambda i: i, 0) == []


def test_usable_cpus_is_the_affinity_or_else_the_cpu_count(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert usable_cpus() == 3


def test_mixed_views_are_blends_of_two_crops_views_with_the_blend_of_their_labels(crop_folder):
    from deepfake_kd.training.train import ViewFeed

    crops, labels = training_data(crop_folder)
    feed = ViewFeed(crops[:6], Augment(), views=2, seed=5, mixed=2)
    assert feed.total == 4 and feed.lam.shape == feed.partner.shape == (6, 2)
    index = torch.arange(6)
    for m in range(2):
        blend = feed.images(index, torch.full((6,), 2 + m))
        own = feed.images(index, torch.from_numpy(feed.own_view[:, m]))
        partner = feed.images(torch.from_numpy(feed.partner[:, m]),
                              torch.from_numpy(feed.partner_view[:, m]))
        lam = torch.from_numpy(feed.lam[:, m]).view(-1, 1, 1, 1)
        want = (lam * own.float() + (1 - lam) * partner.float()).round()
        assert torch.equal(blend.float(), want)
    # a batch mixing plain views and blends gives each row what it gives alone
    view = torch.tensor([0, 3, 1, 2, 3, 0])
    rows = feed.images(index, view)
    for j in range(6):
        assert torch.equal(rows[j], feed.images(index[j:j + 1], view[j:j + 1])[0])
    # a blend's label is the mix of the two crops' labels; plain views keep the crop's own
    targets = feed.view_targets(labels[:6])
    assert targets.shape == (6, 4) and (targets[:, :2] == labels[:6, None]).all()
    assert np.allclose(targets[:, 2:], feed.lam * labels[:6, None]
                       + (1 - feed.lam) * labels[:6][feed.partner])
    # blend m does not depend on how many blends there are
    fewer = ViewFeed(crops[:6], Augment(), views=2, seed=5, mixed=1)
    assert torch.equal(fewer.images(index, torch.full((6,), 2)),
                       feed.images(index, torch.full((6,), 2)))
    assert ViewFeed(crops[:6], Augment(), views=2).view_targets(labels[:6]).shape == (6,)


def test_teacher_view_logits_are_the_teachers_logits_of_those_views(crop_folder, tmp_path):
    from deepfake_kd.pipeline.runtime import accelerate
    from deepfake_kd.training.distill import cached_view_logits
    from deepfake_kd.training.train import ViewFeed

    crops, _ = training_data(crop_folder)
    feed = ViewFeed(crops[:5], Augment(), views=2, seed=1)
    teacher = StudentCNN(**TINY_STUDENT).eval()  # any model can teach
    logits = cached_view_logits("in-memory", teacher, feed, tmp_path, chunk=3, log=lambda m: None)
    assert logits.shape == (5, 2)
    with torch.no_grad():
        for k in range(2):
            images = feed.images(torch.arange(5), torch.full((5,), k))
            assert np.allclose(logits[:, k], teacher(teacher.preprocess(images)).numpy(),
                               atol=1e-5)
    assert len(list(tmp_path.glob("teacher-views-*/view*.npy"))) == 4  # 2 views x 2 chunks
    # distill's default on a CPU: the same teacher in ONNX Runtime, cached apart, same logits
    onnx = cached_view_logits("in-memory", accelerate(teacher, "onnx"), feed, tmp_path, chunk=3,
                              log=lambda m: None)
    assert len(list(tmp_path.glob("teacher-views-*"))) == 2
    assert np.allclose(onnx, logits, atol=1e-4)
    # a blend added later: only the blend is scored, the plain views' files are used again
    blended = ViewFeed(crops[:5], Augment(), views=2, seed=1, mixed=1)
    messages = []
    both = cached_view_logits("in-memory", teacher, blended, tmp_path, chunk=3,
                              log=messages.append)
    assert both.shape == (5, 3) and np.array_equal(both[:, :2], logits)
    assert len(messages) == 2 and all("view 2," in m for m in messages)
    with torch.no_grad():
        images = blended.images(torch.arange(5), torch.full((5,), 2))
        assert np.allclose(both[:, 2], teacher(teacher.preprocess(images)).numpy(), atol=1e-5)


def test_teacher_view_logits_autocast_where_the_teacher_runs(crop_folder, tmp_path,
                                                            monkeypatch):
    """--bf16 on a GPU run: the teacher's autocast is a CUDA one (a CPU autocast did nothing)."""
    from deepfake_kd.training import distill
    from deepfake_kd.training.train import ViewFeed

    crops, _ = training_data(crop_folder)
    seen, autocast = [], torch.autocast

    def spy(device_type, *, dtype, enabled):
        seen.append((device_type, dtype, enabled))
        return autocast("cpu", dtype=dtype, enabled=False)  # no GPU here: record, run plain

    monkeypatch.setattr(distill.torch, "autocast", spy)
    feed = ViewFeed(crops[:4], Augment(), views=1, seed=2)
    distill.cached_view_logits("in-memory", StudentCNN(**TINY_STUDENT).eval(), feed, tmp_path,
                               bf16=True, device_type="cuda", chunk=2, log=lambda m: None)
    assert seen == [("cuda", torch.bfloat16, True)] * 2  # one per chunk


def test_teacher_view_features_are_its_pre_logits_of_those_views(crop_folder, tmp_path):
    from deepfake_kd.models import CrossEfficientViT
    from deepfake_kd.pipeline.runtime import accelerate
    from deepfake_kd.training.distill import PreLogits, cached_view_features
    from deepfake_kd.training.train import ViewFeed

    crops, _ = training_data(crop_folder)
    feed = ViewFeed(crops[:5], Augment(), views=2, seed=1)
    torch.manual_seed(0)
    teacher = CrossEfficientViT(**TINY_TEACHER).eval()
    features = cached_view_features("in-memory", PreLogits(teacher), feed, tmp_path, chunk=3,
                                    log=lambda m: None)
    assert features.shape == (5, 2, 32) and features.dtype == np.float16
    with torch.no_grad():
        for k in range(2):
            images = teacher.preprocess(feed.images(torch.arange(5), torch.full((5,), k)))
            assert np.allclose(features[:, k], teacher.pre_logits(images).numpy(), atol=1e-2)
    assert len(list(tmp_path.glob("teacher-features-*/view*.npy"))) == 4  # 2 views x 2 chunks
    assert not list(tmp_path.glob("teacher-views-*"))  # apart from the logits
    onnx = cached_view_features("in-memory", accelerate(PreLogits(teacher), "onnx"), feed,
                                tmp_path, chunk=3, log=lambda m: None)
    assert np.allclose(onnx.astype(np.float32), features.astype(np.float32), atol=1e-2)


def test_feature_distillation_adds_the_projected_feature_error_to_the_kd_loss():
    from deepfake_kd.training.distill import FeatureDistillation, kd_loss_fn

    torch.manual_seed(0)
    mean, std = np.array([1.0, -2.0, 0.5], np.float32), np.array([2.0, 0.5, 1.0], np.float32)
    loss = FeatureDistillation(student_dim=4, teacher_mean=mean, teacher_std=std, weight=0.3,
                               alpha=0.5, temperature=2.0)
    student = torch.randn(6, 4)
    teacher = torch.randn(6, 3) * torch.from_numpy(std) + torch.from_numpy(mean)
    outputs = {"logit": torch.randn(6), "pre_logits": student}
    targets = {"label": torch.ones(6), "teacher_logit": torch.randn(6),
               "teacher_features": teacher}
    standardised = (teacher - torch.from_numpy(mean)) / torch.from_numpy(std)
    expected = ((loss.projection(student) - standardised) ** 2).mean(-1)
    kd = kd_loss_fn(outputs, targets, alpha=0.5, temperature=2.0)
    assert torch.allclose(loss(outputs, targets), kd + 0.3 * expected)
    # for a student: its feature width, and the teacher's features' own mean and spread
    features = np.random.default_rng(0).normal([1, 2, 3], [4, 5, 6], (500, 2, 3))
    made = FeatureDistillation.for_student(StudentCNN(**TINY_STUDENT), features, weight=1.0,
                                           alpha=0.5, temperature=2.0)
    assert made.projection.in_features == 8 and made.projection.out_features == 3
    flat = features.reshape(-1, 3)
    assert np.allclose(made.teacher_mean, flat.mean(0), atol=1e-5)
    assert np.allclose(made.teacher_std, flat.std(0), rtol=1e-4)
    # a projection that reproduces the teacher leaves the KD loss alone
    with torch.no_grad():
        loss.projection.weight.zero_()
        loss.projection.bias.zero_()
    at_mean = torch.from_numpy(mean).expand(6, 3)
    assert torch.allclose(loss(outputs, {**targets, "teacher_features": at_mean}), kd)


def test_fit_trains_a_trainable_loss_and_resumes_it(crop_folder, tmp_path):
    from deepfake_kd.models import TinyEfficientNet
    from deepfake_kd.training.distill import FeatureDistillation
    from deepfake_kd.training.train import ViewFeed

    crops, labels = training_data(crop_folder)
    rng = np.random.default_rng(0)
    teacher_features = rng.normal(size=(len(crops), 2, 3)).astype(np.float16)
    targets = {"label": labels, "teacher_logit": rng.normal(size=(len(crops), 2)),
               "teacher_features": teacher_features}

    def run(epochs: int):
        torch.manual_seed(0)
        loss = FeatureDistillation(student_dim=8, teacher_mean=np.zeros(3, np.float32),
                                   teacher_std=np.ones(3, np.float32), weight=1.0, alpha=0.5,
                                   temperature=2.0)
        before = loss.projection.weight.detach().clone()
        fit(TinyEfficientNet(**TINY_EFFICIENTNET), train=ViewFeed(crops, Augment(), views=2),
            train_targets=targets, val=CropFeed(crops), val_labels=labels, out_dir=tmp_path,
            loss_fn=loss, progress=False, log=lambda m: None,
            config=FitConfig(batch_size=16, epochs=epochs))
        return before, loss

    before, loss = run(1)
    assert not torch.equal(before, loss.projection.weight)  # the projection learnt
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert torch.equal(saved["loss"]["projection.weight"], loss.projection.weight)
    _, resumed = run(1)  # the schedule is done: the projection comes back from the checkpoint
    assert torch.equal(resumed.projection.weight, loss.projection.weight)
    assert not any(k.startswith("projection") for k in load_model(str(tmp_path / "best"))
                   .state_dict())  # never part of the student


def test_views_made_beforehand_are_those_views_at_the_students_size(crop_folder, tmp_path):
    from deepfake_kd.training.distill import cached_views, resize_crops
    from deepfake_kd.training.train import ViewFeed

    crops, _ = training_data(crop_folder)
    feed = ViewFeed(crops[:5], Augment(), views=2, seed=1)
    made = cached_views(feed, 32, tmp_path, chunk=3, log=lambda m: None)
    assert made.made.shape == (5, 2, 32, 32, 3) and made.made.dtype == np.uint8
    index, view = torch.arange(5), torch.tensor([0, 1, 1, 0, 1])
    want = resize_crops(feed.images(index, view).permute(0, 2, 3, 1).numpy(), 32)
    assert np.array_equal(made.images(index, view).permute(0, 2, 3, 1).numpy(), want)
    assert len(list(tmp_path.glob("views-32px-*/view*.npy"))) == 4  # 2 views x 2 chunks
    again = cached_views(feed, 32, tmp_path, chunk=3, log=lambda m: pytest.fail(m))  # cached
    assert np.array_equal(again.made, made.made)


def test_evaluate_command_reports_both_models(crop_folder, tmp_path, capsys):
    from deepfake_kd.models import CrossEfficientViT, save_model
    from tests.test_models import TINY_TEACHER

    save_model(CrossEfficientViT(**TINY_TEACHER), tmp_path / "teacher")
    save_model(StudentCNN(**TINY_STUDENT), tmp_path / "student")
    report = tmp_path / "report.json"
    assert main(["evaluate", "--teacher", str(tmp_path / "teacher"), "--student",
                 str(tmp_path / "student"), "--manifest", str(crop_folder), "--split", "train",
                 "--cache-dir", str(tmp_path / "cache"), "--json", str(report)]) == 0
    written = json.loads(report.read_text())
    figures = written["crops"]["metrics"]
    n_train = sum(s.split == "train" for s in read_samples(crop_folder)[1])
    for name in ("teacher", "student"):
        assert set(figures[name]) == {"auc", "accuracy", "f1", "log_loss", "n",
                                      "reals_fake_at_0.5", "reals_fake_at_0.55",
                                      "reals_mean_p_fake"}
        assert figures[name]["n"] == n_train
        conditions = written["robustness"][name]
        assert list(conditions) == ["clean", "shrink64", "jpeg35", "blur1.2", "combined"]
        assert conditions["clean"] == figures[name]
        assert all(0 <= c["reals_fake_at_0.55"] <= c["reals_fake_at_0.5"] <= 1
                   for c in conditions.values())
    out = capsys.readouterr().out
    assert "AUC" in out and "robustness" in out and "combined" in out



def test_paired_auc_difference_separates_a_real_gap_from_luck():
    """Two models on the same samples: a copy differs by exactly 0 on every draw; a model whose
    scores carry more of the label gets an interval above 0; one that differs by noise alone
    gets an interval around 0."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    weak = labels + rng.normal(0, 1.2, 2000)
    strong = labels + rng.normal(0, 0.6, 2000)
    same = paired_auc_difference(labels, weak, weak, resamples=200)
    assert same["auc_difference"] == 0 and same["ci95"] == [0.0, 0.0]
    gap = paired_auc_difference(labels, weak, strong, resamples=200)
    assert gap["auc_difference"] == pytest.approx(roc_auc(labels, strong) - roc_auc(labels, weak))
    assert 0 < gap["ci95"][0] < gap["auc_difference"] < gap["ci95"][1]
    noise = paired_auc_difference(labels, weak, weak + rng.normal(0, 0.05, 2000), resamples=200)
    assert noise["ci95"][0] < 0 < noise["ci95"][1]
    with pytest.raises(ValueError, match="one probability per label"):
        paired_auc_difference(labels, weak, strong[:-1])


def test_evaluate_against_a_baseline_reports_paired_differences(crop_folder, tmp_path, capsys):
    """`--baseline REF`: scored on the same crops, and each model's AUC minus the baseline's is
    reported per condition with its interval; with both roles, the student against the teacher
    too. The baseline here is the student itself, so its own difference is exactly 0."""
    from deepfake_kd.models import CrossEfficientViT, save_model
    from tests.test_models import TINY_TEACHER

    save_model(CrossEfficientViT(**TINY_TEACHER), tmp_path / "teacher")
    save_model(StudentCNN(**TINY_STUDENT), tmp_path / "student")
    report = tmp_path / "report.json"
    assert main(["evaluate", "--teacher", str(tmp_path / "teacher"), "--student",
                 str(tmp_path / "student"), "--baseline", str(tmp_path / "student"),
                 "--manifest", str(crop_folder), "--split", "train", "--no-robustness",
                 "--cache-dir", str(tmp_path / "cache"), "--json", str(report)]) == 0
    written = json.loads(report.read_text())
    assert written["references"]["baseline"] == str(tmp_path / "student")
    assert written["runtime"] == "eager"
    metrics = written["crops"]["metrics"]
    paired = written["paired"]
    assert set(paired) == {"teacher - baseline", "student - baseline", "student - teacher"}
    assert paired["student - baseline"]["clean"]["auc_difference"] == 0
    gap = paired["student - teacher"]["clean"]
    assert gap["auc_difference"] == pytest.approx(metrics["student"]["auc"]
                                                  - metrics["teacher"]["auc"])
    assert gap["ci95"][0] <= gap["auc_difference"] <= gap["ci95"][1]
    assert "paired differences" in capsys.readouterr().out

def test_evaluate_one_role_does_not_load_the_other(crop_folder, tmp_path):
    """`--roles student`: a new student is evaluated without the teacher (here a teacher
    folder that does not exist, which loading would refuse)."""
    from deepfake_kd.models import save_model

    save_model(StudentCNN(**TINY_STUDENT), tmp_path / "student")
    report = tmp_path / "report.json"
    assert main(["evaluate", "--roles", "student", "--teacher", str(tmp_path / "missing"),
                 "--student", str(tmp_path / "student"), "--manifest", str(crop_folder),
                 "--split", "train", "--no-robustness", "--cache-dir", str(tmp_path / "cache"),
                 "--json", str(report)]) == 0
    written = json.loads(report.read_text())
    assert list(written["crops"]["metrics"]) == ["student"]
    assert list(written["references"]) == ["student"]



def test_evaluate_through_onnx_runtime_gives_the_eager_figures(crop_folder, tmp_path,
                                                               monkeypatch):
    """`--runtime onnx`: the same models behind ONNX Runtime score the crops as eager does."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from deepfake_kd.models import save_model

    monkeypatch.setenv("DEEPFAKE_KD_CACHE", str(tmp_path / "onnx"))
    save_model(StudentCNN(**TINY_STUDENT), tmp_path / "student")
    figures = {}
    for runtime in ("eager", "onnx"):
        report = tmp_path / f"{runtime}.json"
        assert main(["evaluate", "--roles", "student", "--student", str(tmp_path / "student"),
                     "--manifest", str(crop_folder), "--split", "train", "--no-robustness",
                     "--runtime", runtime, "--cache-dir", str(tmp_path / "cache"),
                     "--json", str(report)]) == 0
        written = json.loads(report.read_text())
        assert written["runtime"] == runtime
        figures[runtime] = written["crops"]["metrics"]["student"]
    assert list((tmp_path / "onnx").rglob("*.onnx"))  # it did run in ONNX Runtime
    for key in ("auc", "accuracy", "reals_fake_at_0.55"):
        assert figures["onnx"][key] == pytest.approx(figures["eager"][key], abs=1e-4)
    assert figures["onnx"]["log_loss"] == pytest.approx(figures["eager"]["log_loss"], abs=1e-4)

def test_teacher_trunks_can_start_from_a_trained_baseline(tmp_path):
    from deepfake_kd.models import CrossEfficientViT, EfficientNetClassifier, save_model
    from deepfake_kd.training.train import init_trunks_from, trained_trunk_state_dict
    from tests.test_models import TINY_TEACHER

    torch.manual_seed(0)
    baseline = EfficientNetClassifier(image_size=64)
    save_model(baseline, tmp_path / "baseline")
    teacher = CrossEfficientViT(**TINY_TEACHER, backbone="efficientnet_lite0")
    init_trunks_from(teacher, trained_trunk_state_dict(str(tmp_path / "baseline")))
    for trunk in (teacher.sm_embedder.trunk, teacher.lg_embedder.trunk):
        assert torch.equal(trunk.conv_stem.weight, baseline.trunk.conv_stem.weight)
    assert torch.equal(teacher.sm_embedder.trunk.conv_head.weight, baseline.trunk.conv_head.weight)


HEAP_PROBE = """
import ctypes, sys
from deepfake_kd.util import keep_freed_heap
names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
Info = type("Info", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_size_t) for n in names]})
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
kept = keep_freed_heap() if sys.argv[1] == "keep" else None
block = libc.malloc(64 << 20)
during = libc.mallinfo2().hblkhd >> 20
libc.free(ctypes.c_void_p(block))
print(kept, during, libc.mallinfo2().arena >> 20)
"""


def heap_probe(mode: str) -> list[str]:
    """In a fresh process (the policy is process-wide): malloc and free a 64 MB block; print
    keep_freed_heap's answer, the MB glibc served by mmap while it was held, and the MB its heap
    holds after the free."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # glibc's malloc itself
    done = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True,
                          text=True, env=env, timeout=60)
    if "mallinfo2" in done.stderr:
        pytest.skip("not glibc 2.33 or later")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_heap_serves_large_blocks_from_a_heap_it_keeps():
    kept, during, heap = heap_probe("keep")
    assert kept == "True"
    assert int(during) < 64 and int(heap) >= 64  # from the heap, and still there after the free
    _, during, heap = heap_probe("default")
    assert int(during) >= 64 and int(heap) < 64  # glibc's default: mapped, and handed back


def test_keep_freed_heap_is_a_no_op_without_glibc(monkeypatch):
    def no_libc(*args, **kwargs):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr("ctypes.CDLL", no_libc)
    assert keep_freed_heap() is False
