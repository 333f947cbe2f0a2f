"""Pruning, distillation (with resume), QAT wrapping and pruned-model round trips."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models.export import export_onnx, load_weights, save_weights
from pipeline.types import VigilError
from tests.factories import TINY_SIZE, random_images, tiny_manifest, tiny_yolo
from toolchain.distill import DistillSettings, distill, distill_loss, load_checkpoint, make_batch
from toolchain.prune import count_params, prune_l1
from toolchain.qat import ActObserverFQ, QatConv, calibrate_ranges, prepare_qat, strip_qat

SIZE = TINY_SIZE


def test_l1_pruning_shrinks_every_layer_but_keeps_the_head_outputs() -> None:
    net = tiny_yolo()
    before = count_params(net)
    x = torch.rand(2, 3, SIZE, SIZE)
    facts = prune_l1(net, 0.5, SIZE)
    assert facts.params_before == before and facts.params_after == count_params(net)
    assert facts.params_after < 0.45 * before and facts.macs_after < facts.macs_before
    first = net.model[0].conv
    assert first.out_channels == 8  # 16 channels, half kept (multiple of 4)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3 * sum((SIZE // s) ** 2 for s in (8, 16, 32)), 8)
    assert all(m.out_channels == 3 * 8 for m in net.detect.m)


def test_pruning_removes_the_channel_groups_with_the_smallest_l1_norm() -> None:
    net = tiny_yolo()
    odd = torch.arange(1, 16, 2)
    with torch.no_grad():  # make layer 0's odd channels small in every layer they touch
        net.model[0].conv.weight[odd] *= 1e-3
        net.model[0].bn.weight[odd] *= 1e-3
        net.model[1].conv.weight[:, odd] *= 1e-3
    w = net.model[0].conv.weight.detach().clone()
    prune_l1(net, 0.5, SIZE)
    assert torch.equal(net.model[0].conv.weight.detach(), w[0::2])


@pytest.mark.parametrize("ratio", [0.0, -0.1, 0.95, 1.0])
def test_bad_ratio_is_refused(ratio: float) -> None:
    with pytest.raises(VigilError, match="--ratio must be in"):
        prune_l1(tiny_yolo(), ratio, SIZE)


def test_pruned_weights_round_trip_through_safetensors(tmp_path: Path) -> None:
    net = tiny_yolo()
    prune_l1(net, 0.3, SIZE)
    manifest = tiny_manifest()
    manifest.architecture["pruned"] = True
    path = save_weights(net, manifest, tmp_path)
    loaded, _ = load_weights(path)
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert count_params(loaded) == count_params(net)
    # the same file without the pruned flag is refused with one line, not a traceback
    manifest.architecture.pop("pruned")
    manifest.save(path)
    with pytest.raises(VigilError, match="weights do not match the architecture"):
        load_weights(path)


def test_distillation_loss_is_smallest_at_the_teacher() -> None:
    net = tiny_yolo()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        t = net.raw(x)
        same, parts = distill_loss(t, t)
        other, _ = distill_loss([v + torch.randn_like(v) for v in t], t)
    assert parts["box"] == 0.0 and float(other) > float(same)


def test_distillation_reduces_the_loss_and_resumes_exactly(tmp_path: Path) -> None:
    teacher = tiny_yolo()
    images = random_images()
    s = DistillSettings(steps=6, batch=2, imgsz=SIZE, warmup=1, save_every=3, lr=3e-3)
    student = copy.deepcopy(teacher)
    prune_l1(student, 0.5, SIZE)
    start = copy.deepcopy(student)
    x = make_batch(images, s, 99).float()
    with torch.no_grad():
        loss_before = float(distill_loss(student.raw(x), teacher.raw(x))[0])

    torch.manual_seed(0)
    full = copy.deepcopy(start)
    distill(full, teacher, images, s, tmp_path / "full.ckpt")
    with torch.no_grad():
        loss_after = float(distill_loss(full.eval().raw(x), teacher.raw(x))[0])
    assert loss_after < loss_before

    # interrupted in step 5 (as by Ctrl-C), resumed from the step-3 checkpoint: the same
    # weights as the straight run
    def interrupt(step: int, losses: dict[str, float]) -> None:
        if step == 5:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        distill(copy.deepcopy(start), teacher, images, s, tmp_path / "h", progress=interrupt)
    state, opt, step = load_checkpoint(tmp_path / "h")
    assert step == 3
    resumed = copy.deepcopy(start)
    resumed.load_state_dict(state)
    distill(resumed, teacher, images, s, tmp_path / "h", resume=opt, start_step=step)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_distillation_batches_are_letterboxed_rgb_in_unit_range() -> None:
    s = DistillSettings(batch=4, imgsz=SIZE)
    a, b = make_batch(random_images(), s, 5), make_batch(random_images(), s, 5)
    assert a.shape == (4, 3, SIZE, SIZE) and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, make_batch(random_images(), s, 6))


def test_qat_wrapping_quantizes_and_strips_back_to_float(tmp_path: Path) -> None:
    net = tiny_yolo()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = net(x)
    qat = prepare_qat(copy.deepcopy(net))
    assert sum(isinstance(m, QatConv) for m in qat.modules()) > 10
    calibrate_ranges(qat, [x])
    qat.eval()
    with torch.no_grad():
        fake = qat(x)
    # INT8 fake quantization moves the outputs a little, not a lot
    assert not torch.equal(fake, ref)
    assert float((fake - ref).abs().max()) < 0.05 * float(ref.abs().max())
    plain = strip_qat(qat)
    assert not any(isinstance(m, (QatConv, ActObserverFQ)) for m in plain.modules())
    with torch.no_grad():  # untrained: only BN folding separates it from the original
        assert torch.allclose(plain(x), ref, rtol=1e-4, atol=1e-3)
    export_onnx(plain, tmp_path / "qat.onnx", SIZE)  # exports as a plain fused network
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "qat.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, plain(x).numpy(), rtol=1e-3, atol=1e-3)
