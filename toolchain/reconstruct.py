"""Layer-wise least-squares reconstruction of a channel-pruned network (no labels, no SGD).

After structured pruning every convolution sees fewer input channels than it was trained
with. Channel pruning keeps channel identities, so for each convolution, in execution order, we
solve a ridge regression for new weights that make the pruned network's convolution output (on
its own, already reconstructed, inputs) match the unpruned network's output at the kept output
channels:

    W* = argmin_W || unfold(x_student) W - y_teacher[:, kept] ||^2 + ridge * ||W||^2

over pixel positions sampled from a few dozen images. This is the reconstruction step of
channel pruning in the literature (He et al. 2017; ThiNet, Luo et al. 2017); it recovers most
of what pruning cost in seconds, and leaves distillation a much shorter way to go.

Shapes: images ``(B, 3, S, S) float32`` RGB in [0, 1]; the regression's design matrix is
``(positions, C_in * k * k [+ 1 for a bias])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.yolov5 import YOLOv5


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted tensor is captured."""


def _execution_order(net: YOLOv5, x: torch.Tensor) -> list[str]:
    """Names of every Conv2d in the order the forward pass runs them."""
    order: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args, n=name: order.append(n))
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in handles:
            h.remove()
    return order


def _capture(net: nn.Module, module: nn.Module, x: torch.Tensor, want: str) -> torch.Tensor:
    """``module``'s input (``want="input"``) or output during ``net(x)``, stopping there."""
    box: list[torch.Tensor] = []

    def pre(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        box.append(args[0])
        raise _Stop

    def post(mod: nn.Module, args: object, out: torch.Tensor) -> None:
        box.append(out)
        raise _Stop

    handle = (
        module.register_forward_pre_hook(pre)
        if want == "input"
        else module.register_forward_hook(post)
    )
    try:
        with torch.no_grad():
            net(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box[0]


def output_channels(student: YOLOv5, teacher: YOLOv5) -> dict[str, torch.Tensor]:
    """For every Conv2d, the teacher output channel of each student output channel.

    Conv blocks are matched by their BatchNorm rows (pruning copies them unchanged, see
    ``toolchain.distill.feature_hints``); the Detect convolutions are never pruned (identity).
    """
    from toolchain.distill import feature_hints

    kept = {f"{name}.conv": idx for name, idx in feature_hints(student, teacher)}
    head = len(student.model) - 1
    for i in range(student.detect.nl):
        kept[f"model.{head}.m.{i}"] = torch.arange(student.detect.na * student.detect.no)
    return kept


def _gather(cols: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """``(B, D, L)`` columns at positions ``pick`` ``(B, P)`` -> ``(B * P, D)`` rows."""
    b, d, _ = cols.shape
    picked = torch.gather(cols, 2, pick[:, None].expand(b, d, -1))
    return picked.permute(0, 2, 1).reshape(-1, d)


def _following_bn(modules: dict[str, nn.Module], conv_name: str) -> nn.BatchNorm2d | None:
    """The BatchNorm of the Conv block ``<block>.conv`` belongs to, if any."""
    block, _, leaf = conv_name.rpartition(".")
    bn = modules.get(f"{block}.bn") if leaf == "conv" else None
    return bn if isinstance(bn, nn.BatchNorm2d) else None


def reconstruct(
    student: YOLOv5,
    teacher: YOLOv5,
    kept: dict[str, torch.Tensor],
    batches: Sequence[torch.Tensor],
    positions: int = 256,
    ridge: float = 1e-3,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Refit every convolution of ``student`` in place; returns the relative residual per layer
    (``|XW - Y|^2 / |Y|^2`` on the sampled positions, after the fit)."""
    student.eval()
    teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    order = [n for n in _execution_order(student, batches[0]) if n in kept]
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    residuals: dict[str, float] = {}
    for step, name in enumerate(order):
        conv_s, conv_t = s_mods[name], t_mods[name]
        assert isinstance(conv_s, nn.Conv2d) and isinstance(conv_t, nn.Conv2d)
        idx = kept[name]
        bn = _following_bn(s_mods, name)
        xs_all, ys_all = [], []
        for x in batches:
            xin = _capture(student, conv_s, x, "input")
            yt = _capture(teacher, conv_t, x, "output")[:, idx]
            pad = conv_s.padding
            assert isinstance(pad, tuple)  # YOLOv5 convolutions pad by integers, never "same"
            cols = F.unfold(xin, conv_s.kernel_size, padding=pad, stride=conv_s.stride)
            b, _, length = cols.shape
            pick = torch.randint(0, length, (b, min(positions, length)), generator=gen)
            xs_all.append(_gather(cols, pick))
            ys_all.append(_gather(yt.flatten(2), pick))
        xm = torch.cat([torch.cat(xs_all), torch.ones(sum(len(a) for a in xs_all), 1)], 1).double()
        ym = torch.cat(ys_all).double()
        gram = xm.T @ xm
        reg = ridge * float(gram.diagonal().mean())
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        eye[-1, -1] = 0.0  # the intercept is not shrunk
        w = torch.linalg.solve(gram + reg * eye, xm.T @ ym)
        residuals[name] = float((xm @ w - ym).pow(2).sum() / ym.pow(2).sum().clamp(min=1e-12))
        weight, intercept = w[:-1].T.float(), w[-1].float()
        with torch.no_grad():
            conv_s.weight.copy_(weight.reshape(conv_s.weight.shape))
            if conv_s.bias is not None:
                conv_s.bias.copy_(intercept)
            elif bn is not None and bn.running_mean is not None:
                bn.running_mean.sub_(intercept)  # BN(conv(x) + b) == BN'(conv(x)), mean' = mean - b
        if progress is not None:
            progress(step + 1, len(order))
    return residuals
