"""The YOLOv5 (v6.0+ architecture) detection network in plain torch.

Conv (Conv2d + BatchNorm + SiLU), C3, Bottleneck, SPPF, nearest Upsample, Concat and the
anchor-based ``Detect`` head, built from the same layer table that Ultralytics' YAML files use,
scaled by depth and width multipliers (n/s/m/l/x). Parameter and buffer names match the
official checkpoints (``model.<i>.<...>``), so a converted state dict loads with
``strict=True``.

Input: ``(B, 3, H, W) float32`` RGB in [0, 1], H and W multiples of 32.
Output of ``forward`` in export/inference mode: ``(B, A, 5 + nc) float32`` with
``A = 3 * sum(H/s * W/s for s in (8, 16, 32))``; columns are ``cx, cy, w, h`` in input
(letterbox) pixels, objectness and per-class probabilities, all already passed through the
sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# The v6.0 layer tables (yolov5{n,s,m,l,x}.yaml share them; only the multipliers differ).
# Each row: [from, repeats, module, args].
V6_BACKBONE: list[list[Any]] = [
    [-1, 1, "Conv", [64, 6, 2, 2]],
    [-1, 1, "Conv", [128, 3, 2]],
    [-1, 3, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 6, "C3", [256]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 9, "C3", [512]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 3, "C3", [1024]],
    [-1, 1, "SPPF", [1024, 5]],
]
V6_HEAD: list[list[Any]] = [
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 3, "C3", [256, False]],
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 14], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 10], 1, "Concat", [1]],
    [-1, 3, "C3", [1024, False]],
    [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],
]
V6_ANCHORS: list[list[int]] = [
    [10, 13, 16, 30, 33, 23],
    [30, 61, 62, 45, 59, 119],
    [116, 90, 156, 198, 373, 326],
]
SCALES: dict[str, tuple[float, float]] = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.0, 1.0),
    "x": (1.33, 1.25),
}


def _autopad(k: int, p: int | None) -> int:
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, _autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """Anchor-based head. ``anchors`` buffer: ``(nl, na, 2)`` in grid units (pixels / stride)."""

    anchors: torch.Tensor
    f: list[int]  # indices of the layers it reads (set by the layer-table builder)

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int]) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.stride = torch.zeros(self.nl)

    def logits(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw head outputs per level, ``(B, na, ny, nx, 5 + nc)`` before the sigmoid (training
        and distillation targets; the columns are ``tx, ty, tw, th, obj, cls...``)."""
        out = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            ny, nx = int(x.shape[2]), int(x.shape[3])
            out.append(x.view(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2))
        return out

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            # Python ints (not traced shape tensors): an export then has constant grids and a
            # static output shape; only the batch stays dynamic.
            ny, nx = int(x.shape[2]), int(x.shape[3])
            x = x.view(-1, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            stride = float(self.stride[i])
            yv, xv = torch.meshgrid(
                torch.arange(ny, dtype=x.dtype), torch.arange(nx, dtype=x.dtype), indexing="ij"
            )
            grid = (torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5).to(x.device)
            anchor_grid = (self.anchors[i] * stride).view(1, self.na, 1, 1, 2)
            xy, wh, conf = x.split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * stride
            wh = (wh * 2) ** 2 * anchor_grid
            out.append(torch.cat((xy, wh, conf), 4).view(-1, self.na * nx * ny, self.no))
        return torch.cat(out, 1)


_MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "C3": C3,
    "SPPF": SPPF,
    "Concat": Concat,
    "nn.Upsample": nn.Upsample,
    "Detect": Detect,
}


class YOLOv5(nn.Module):
    """A YOLOv5 detection model built from a layer table (see ``V6_BACKBONE``/``V6_HEAD``)."""

    def __init__(
        self,
        nc: int = 80,
        depth_multiple: float = 0.33,
        width_multiple: float = 0.25,
        anchors: Sequence[Sequence[float]] = tuple(map(tuple, V6_ANCHORS)),
        backbone: Sequence[Sequence[Any]] = tuple(V6_BACKBONE),
        head: Sequence[Sequence[Any]] = tuple(V6_HEAD),
    ) -> None:
        super().__init__()
        self.nc = nc
        layers, self.save = _build(nc, depth_multiple, width_multiple, anchors, [*backbone, *head])
        self.model = nn.Sequential(*layers)
        det = self.model[-1]
        assert isinstance(det, Detect)
        det.stride = torch.tensor([8.0, 16.0, 32.0])[: det.nl]

    @property
    def detect(self) -> Detect:
        det = self.model[-1]
        assert isinstance(det, Detect)
        return det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(self.head_inputs(x))

    def head_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps the Detect layer reads: ``(B, C_i, H/s_i, W/s_i)`` per stride."""
        y: list[Any] = []
        out: Any = x
        layers: list[Any] = list(self.model)[:-1]
        for m in layers:
            if m.f != -1:  # inputs from earlier layers (an index, or a list for Concat)
                out = y[m.f] if isinstance(m.f, int) else [out if j == -1 else y[j] for j in m.f]
            out = m(out)
            y.append(out if m.i in self.save else None)
        return [out if j == -1 else y[j] for j in self.detect.f]

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pre-sigmoid head outputs per level (see ``Detect.logits``)."""
        return self.detect.logits(self.head_inputs(x))

    def fuse(self) -> YOLOv5:
        """Fold every BatchNorm into its Conv (inference only); returns self."""
        for m in self.modules():
            if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv = fuse_conv_bn(m.conv, m.bn)
                m.bn = nn.Identity()  # type: ignore[assignment]
        return self


def resize_to_state_dict(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Shrink every Conv2d / BatchNorm2d of ``net`` to the shapes stored in ``state``.

    A channel-pruned network keeps the layer table but has fewer channels per layer; its
    safetensors file alone says how many. Only the channel counts change (kernel, stride,
    padding, groups are kept), so the forward code needs nothing else.
    """
    for name, module in list(net.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        if isinstance(module, nn.Conv2d):
            w = state.get(f"{name}.weight")
            if w is None or tuple(w.shape) == tuple(module.weight.shape):
                continue
            c_out, c_in_per_group = int(w.shape[0]), int(w.shape[1])
            new: nn.Module = nn.Conv2d(
                c_in_per_group * module.groups,
                c_out,
                module.kernel_size,  # type: ignore[arg-type]
                module.stride,  # type: ignore[arg-type]
                module.padding,  # type: ignore[arg-type]
                groups=module.groups,
                bias=module.bias is not None,
            )
        elif isinstance(module, nn.BatchNorm2d):
            w = state.get(f"{name}.weight")
            if w is None or int(w.shape[0]) == module.num_features:
                continue
            new = nn.BatchNorm2d(int(w.shape[0]), eps=module.eps, momentum=module.momentum)
        else:
            continue
        setattr(parent, attr, new)


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias equal to ``bn(conv(x))`` in eval mode."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
    ).requires_grad_(False)
    assert bn.running_var is not None and bn.running_mean is not None
    with torch.no_grad():  # the fused parameters are new leaves, not functions of the old ones
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)  # type: ignore[union-attr]
    return fused


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _build(
    nc: int,
    gd: float,
    gw: float,
    anchors: Sequence[Sequence[float]],
    table: Sequence[Sequence[Any]],
) -> tuple[list[nn.Module], set[int]]:
    """Instantiate the layer table; returns the layers and the indices whose outputs are reused."""
    ch = [3]
    layers: list[nn.Module] = []
    save: set[int] = set()
    for i, (f, n, name, args) in enumerate(table):
        if name not in _MODULES:
            raise ValueError(f"unsupported YOLOv5 layer type {name!r} at layer {i}")
        cls = _MODULES[name]
        n = max(round(n * gd), 1) if n > 1 else n
        c2 = ch[-1]
        if cls in (Conv, C3, SPPF):
            c1, c2 = ch[f], args[0]
            c2 = _make_divisible(c2 * gw, 8) if c2 != nc + 5 else c2
            margs: list[Any] = [c1, c2, *args[1:]]
            if cls is C3:
                margs.insert(2, n)
                n = 1
        elif cls is Concat:
            c2 = sum(ch[x] for x in f)
            margs = list(args)
        elif cls is Detect:
            margs = [nc, anchors, [ch[x] for x in f]]
        else:  # nn.Upsample: Ultralytics' YAML spells the size as the string "None"
            c2 = ch[f]
            margs = [None if a == "None" else a for a in args]
        module = nn.Sequential(*(cls(*margs) for _ in range(n))) if n > 1 else cls(*margs)
        module.f, module.i = f, i  # type: ignore[assignment]
        save.update(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            ch = []
        ch.append(c2)
    return layers, save


def build_from_spec(spec: dict[str, Any]) -> YOLOv5:
    """Build from a manifest ``architecture`` dict (keys: nc, depth_multiple, width_multiple,
    anchors, and optionally backbone/head tables)."""
    return YOLOv5(
        nc=int(spec["nc"]),
        depth_multiple=float(spec["depth_multiple"]),
        width_multiple=float(spec["width_multiple"]),
        anchors=spec.get("anchors", V6_ANCHORS),
        backbone=spec.get("backbone", V6_BACKBONE),
        head=spec.get("head", V6_HEAD),
    )
