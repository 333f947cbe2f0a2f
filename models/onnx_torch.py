"""Run an ONNX graph as a torch module: the re-id networks on CUDA without ONNX Runtime's GPU
build (the GPU machines have a CUDA torch; ``onnxruntime-gpu`` is not there).

:func:`torch_module` turns a ``ModelProto`` into an ``nn.Module`` whose ``forward`` executes the
nodes in graph order with ``torch.nn.functional`` ops. Float initializers become buffers (so
``.half()``, ``.to(device)`` and channels-last apply to them); integer tensors and the scalar
inputs of ``Clip`` stay host constants; shape arithmetic (``Shape`` -> ``Gather`` ->
``Concat`` -> ``Reshape``) runs on small CPU int64 tensors. The operator set is what re-id CNNs
use (MobileNetV2, OSNet: tests run both against ONNX Runtime); any other operator is refused at
load time with its name, never mid-stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.types import VigilError

Op = Callable[[list[Any], dict[str, Any]], Any]


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(pads: list[int] | None, rank: int) -> tuple[list[int], bool]:
    """ONNX ``[b0, b1, ..., e0, e1, ...]`` -> (per-axis begin pads, symmetric?)."""
    if not pads:
        return [0] * rank, True
    begin, end = list(pads[:rank]), list(pads[rank:])
    return begin, begin == end


def _torch_pad(pads: list[int], rank: int) -> list[int]:
    """ONNX pads -> ``F.pad`` order (last axis first, begin/end pairs)."""
    out: list[int] = []
    for axis in reversed(range(rank)):
        out += [pads[axis], pads[axis + rank]]
    return out


def _conv(x: list[Any], a: dict[str, Any]) -> Any:
    import torch.nn.functional as F

    w = x[1]
    rank = w.dim() - 2
    begin, symmetric = _pads(a.get("pads"), rank)
    inp = x[0]
    if not symmetric:
        inp, begin = F.pad(inp, _torch_pad(a["pads"], rank)), [0] * rank
    fn = F.conv2d if rank == 2 else F.conv1d
    return fn(
        inp,
        w,
        x[2] if len(x) > 2 else None,
        stride=a.get("strides", [1] * rank),
        padding=begin,
        dilation=a.get("dilations", [1] * rank),
        groups=a.get("group", 1),
    )


def _pool(x: list[Any], a: dict[str, Any], kind: str) -> Any:
    import torch.nn.functional as F

    k = a["kernel_shape"]
    begin, symmetric = _pads(a.get("pads"), len(k))
    inp = x[0]
    if not symmetric:
        fill = -math.inf if kind == "max" else 0.0
        inp, begin = F.pad(inp, _torch_pad(a["pads"], len(k)), value=fill), [0] * len(k)
    stride = a.get("strides", [1] * len(k))
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        dil = a.get("dilations", [1] * len(k))
        return F.max_pool2d(inp, k, stride, begin, dil, ceil_mode=ceil)
    include = bool(a.get("count_include_pad", 0))
    return F.avg_pool2d(inp, k, stride, begin, ceil_mode=ceil, count_include_pad=include)


def _axes(x: list[Any], a: dict[str, Any]) -> list[int] | None:
    """Axes from the attribute (older opsets) or the second input (newer ones)."""
    if "axes" in a:
        return list(a["axes"])
    if len(x) > 1 and x[1] is not None:
        return [int(v) for v in x[1].reshape(-1).tolist()]
    return None


def _reduce_mean(x: list[Any], a: dict[str, Any]) -> Any:
    axes = _axes(x, a)
    keep = bool(a.get("keepdims", 1))
    if axes is None:
        axes = list(range(x[0].dim()))
    return x[0].mean(dim=axes, keepdim=keep)


def _gemm(x: list[Any], a: dict[str, Any]) -> Any:
    m, w = x[0], x[1]
    if a.get("transA", 0):
        m = m.t()
    if a.get("transB", 0):
        w = w.t()
    y = (m @ w) * a.get("alpha", 1.0)
    if len(x) > 2 and x[2] is not None:
        y = y + x[2] * a.get("beta", 1.0)
    return y


def _reshape(x: list[Any], a: dict[str, Any]) -> Any:
    shape = [int(v) for v in x[1].reshape(-1).tolist()]
    src = x[0].shape
    shape = [src[i] if v == 0 and not a.get("allowzero", 0) else v for i, v in enumerate(shape)]
    return x[0].reshape(shape)


def _gather(x: list[Any], a: dict[str, Any]) -> Any:
    import torch

    data, idx = x[0], x[1]
    axis = a.get("axis", 0) % data.dim()
    idx = idx.to(data.device) if isinstance(idx, torch.Tensor) else torch.tensor(idx)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    if idx.dim() == 0:
        return data.select(axis, int(idx))
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])


def _unsqueeze(x: list[Any], a: dict[str, Any]) -> Any:
    out = x[0]
    axes = _axes(x, a) or []
    rank = out.dim() + len(axes)
    for ax in sorted(v % rank for v in axes):
        out = out.unsqueeze(ax)
    return out


def _squeeze(x: list[Any], a: dict[str, Any]) -> Any:
    axes = _axes(x, a)
    if axes is None:
        return x[0].squeeze()
    out = x[0]
    for ax in sorted((v % out.dim() for v in axes), reverse=True):
        out = out.squeeze(ax)
    return out


def _batch_norm(x: list[Any], a: dict[str, Any]) -> Any:
    import torch.nn.functional as F

    return F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))


def _shape(x: list[Any], a: dict[str, Any]) -> Any:
    import torch

    return torch.tensor(list(x[0].shape), dtype=torch.int64)


def _concat(x: list[Any], a: dict[str, Any]) -> Any:
    import torch

    parts = [v for v in x if v is not None]
    if all(not v.is_floating_point() for v in parts):  # shape arithmetic: on the host
        parts = [v.cpu() for v in parts]
    return torch.cat(parts, dim=a["axis"])


def _flatten(x: list[Any], a: dict[str, Any]) -> Any:
    axis = a.get("axis", 1) % max(x[0].dim(), 1)
    lead = math.prod(x[0].shape[:axis])
    return x[0].reshape(lead, -1)


def _lp_norm(x: list[Any], a: dict[str, Any]) -> Any:
    import torch.nn.functional as F

    return F.normalize(x[0], p=float(a.get("p", 2)), dim=a.get("axis", -1))


def _clip(x: list[Any], a: dict[str, Any]) -> Any:
    lo = a.get("min", x[1] if len(x) > 1 else None)
    hi = a.get("max", x[2] if len(x) > 2 else None)
    return x[0].clamp(min=lo, max=hi)


def _ops() -> dict[str, Op]:
    import torch
    import torch.nn.functional as F

    return {
        "Conv": _conv,
        "Relu": lambda x, a: F.relu(x[0]),
        "LeakyRelu": lambda x, a: F.leaky_relu(x[0], a.get("alpha", 0.01)),
        "Sigmoid": lambda x, a: torch.sigmoid(x[0]),
        "Clip": _clip,
        "Add": lambda x, a: x[0] + x[1],
        "Mul": lambda x, a: x[0] * x[1],
        "MaxPool": lambda x, a: _pool(x, a, "max"),
        "AveragePool": lambda x, a: _pool(x, a, "avg"),
        "GlobalAveragePool": lambda x, a: x[0].mean(dim=(2, 3), keepdim=True),
        "ReduceMean": _reduce_mean,
        "Gemm": _gemm,
        "MatMul": lambda x, a: x[0] @ x[1],
        "BatchNormalization": _batch_norm,
        "Flatten": _flatten,
        "Reshape": _reshape,
        "Shape": _shape,
        "Gather": _gather,
        "Unsqueeze": _unsqueeze,
        "Squeeze": _squeeze,
        "Concat": _concat,
        "Identity": lambda x, a: x[0],
        "Dropout": lambda x, a: x[0],
        "LpNormalization": _lp_norm,
    }


# Inputs that must be known when the module is built (a Clip's bounds: python floats).
_SCALAR_INPUTS = {"Clip": (1, 2)}


def supported_ops() -> frozenset[str]:
    return frozenset(_ops()) | {"Constant"}


def torch_module(model: Any, source: str = "model") -> Any:
    """An ``nn.Module`` computing ``model``'s first output from its first input (see the
    module docstring); raises VigilError naming any unsupported operator."""
    import torch
    from onnx import numpy_helper
    from torch import nn

    graph = model.graph
    ops = _ops()
    unknown = sorted({n.op_type for n in graph.node} - supported_ops())
    if unknown:
        raise VigilError(f"{source} uses operators the torch runtime does not run: {unknown}")
    consts: dict[str, Any] = {}
    for init in graph.initializer:
        consts[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    initialized = {i.name for i in graph.initializer}
    graph_input = next(i.name for i in graph.input if i.name not in initialized)
    output = graph.output[0].name

    class OnnxModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.host: dict[str, Any] = {}
            self.buffer_of: dict[str, str] = {}
            scalar_names = {
                n.input[i]
                for n in graph.node
                for i in _SCALAR_INPUTS.get(n.op_type, ())
                if i < len(n.input) and n.input[i]
            }
            for name, arr in consts.items():
                if name in scalar_names:
                    self.host[name] = float(arr)
                elif arr.dtype.kind == "f":
                    key = f"c{len(self.buffer_of)}"
                    self.register_buffer(key, torch.from_numpy(arr.copy()))
                    self.buffer_of[name] = key
                else:
                    self.host[name] = torch.from_numpy(arr.copy())
            self.steps = [
                (n.op_type, list(n.input), list(n.output), _attrs(n))
                for n in graph.node
                if n.op_type != "Constant"
            ]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            env: dict[str, Any] = {graph_input: x}
            for op, inputs, outputs, attrs in self.steps:
                args = [self._value(env, name) if name else None for name in inputs]
                env[outputs[0]] = ops[op](args, attrs)
            result: torch.Tensor = env[output]
            return result

        def _value(self, env: dict[str, Any], name: str) -> Any:
            if name in env:
                return env[name]
            if name in self.buffer_of:
                return getattr(self, self.buffer_of[name])
            return self.host[name]

    return OnnxModule().eval()


def load_torch_module(path: Path) -> tuple[Any, tuple[int, ...]]:
    """The module and the input shape (batch as -1) of the ONNX file at ``path``."""
    import onnx

    if not path.is_file():
        raise VigilError(f"model not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf decode errors have no common base class
        raise VigilError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    initialized = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in initialized)
    shape = tuple(d.dim_value if d.dim_value > 0 else -1 for d in inp.type.tensor_type.shape.dim)
    return torch_module(model, path.name), shape
