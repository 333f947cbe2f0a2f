"""Structured channel pruning of a YOLOv5 network by L1 norm, with torch-pruning.

torch-pruning traces the network once to build its dependency graph (which output channels of
one layer are tied to input channels of the next through residual adds, concatenations, C3's
two branches and SPPF's pooled copies) and removes whole channel groups by the L1 norm of their
weights, so the result is an ordinary, smaller dense network: no masks, no sparse kernels.

Every layer keeps ``1 - ratio`` of its channels (rounded to a multiple of ``round_to`` so the
CPU kernels stay vectorized). The Detect layer's output convolutions are never pruned: their
channels are the ``3 x (5 + nc)`` predictions. Their inputs shrink with the neck.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.yolov5 import YOLOv5
from pipeline.types import VigilError

MAX_RATIO = 0.9


@dataclass(frozen=True)
class PruneFacts:
    """What pruning did: kept in the pruned model's manifest."""

    ratio: float
    round_to: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "method": "torch-pruning L1 (structured channels)",
            "ratio": self.ratio,
            "round_to": self.round_to,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
        }


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio <= MAX_RATIO:
        raise VigilError(f"--ratio must be in (0, {MAX_RATIO}], got {ratio}")
    return ratio


def count_params(net: nn.Module) -> int:
    return sum(int(p.numel()) for p in net.parameters())


def prune_l1(net: YOLOv5, ratio: float, imgsz: int = 320, round_to: int = 4) -> PruneFacts:
    """Prune ``net`` in place: every prunable layer keeps ``1 - ratio`` of its channels.

    ``net`` must be the unfused (Conv + BatchNorm) float network; BatchNorm channels are pruned
    with their convolutions.
    """
    import torch_pruning as tp

    check_ratio(ratio)
    example = torch.zeros(1, 3, imgsz, imgsz)
    net.eval()
    for p in net.parameters():  # the tracer follows autograd, which needs gradients on
        p.requires_grad_(True)
    macs_before, params_before = tp.utils.count_ops_and_params(net, example)
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=list(net.detect.m),
        round_to=round_to,
    )
    pruner.step()
    macs_after, params_after = tp.utils.count_ops_and_params(net, example)
    with torch.no_grad():
        out = net(example)
    if out.shape[-1] != net.detect.no:
        raise VigilError("pruning changed the detection head's outputs; refusing the result")
    return PruneFacts(
        ratio=ratio,
        round_to=round_to,
        params_before=int(params_before),
        params_after=int(params_after),
        macs_before=int(macs_before),
        macs_after=int(macs_after),
    )
