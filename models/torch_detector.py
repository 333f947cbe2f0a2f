"""The YOLOv5 network in torch as a detector backend: CUDA (FP16, CUDA graphs) or CPU (FP32).

Built from a model manifest's safetensors weights (:func:`models.export.load_weights`), with
every BatchNorm folded into its convolution. The head's decode (sigmoid, grid, anchors) runs in
FP32 from grids precomputed for the input size, so the whole forward is free of host work and
can be captured in a CUDA graph; box decode and greedy NMS follow with torch ops on the same
device (:mod:`models.postprocess_torch`), and only the kept boxes travel back to the host.

On a CUDA device (backend ``torch-cuda``):

- the network in FP16 and channels-last, on a dedicated CUDA stream;
- one CUDA graph per batch bucket actually used (powers of two up to ``max_batch``, and
  ``max_batch``): a batch is padded up to its bucket, the padding rows are never decoded; a
  batch larger than ``max_batch`` runs as several buckets (:func:`plan_buckets`); graphs are
  captured on first use and share one memory pool;
- input from the host through a pinned staging buffer and an asynchronous copy, or straight
  from a device tensor (DALI's output through DLPack) with a device-to-device copy;
- one device-to-host copy of the packed detections per batch.

On the CPU (backend ``torch``) the same code runs eagerly in FP32 (no stream, no graph): a test
checks its detections against ONNX Runtime FP32 on real frames.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from models.postprocess import PostprocessParams
from pipeline.types import Detections, VigilError


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes that get a CUDA graph: powers of two below ``max_batch``, and ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return (*sizes, max_batch)


def plan_buckets(n: int, buckets: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Split a batch of ``n`` into ``(start, stop, bucket)`` runs: full runs of the largest
    bucket, then the rest padded up to the smallest bucket that holds it."""
    if n < 0:
        raise ValueError(f"batch size must be >= 0, got {n}")
    largest = buckets[-1]
    runs = []
    start = 0
    while n - start > largest:
        runs.append((start, start + largest, largest))
        start += largest
    if n > start:
        rest = n - start
        runs.append((start, n, next(b for b in buckets if b >= rest)))
    return runs


def _decode_module(net: Any, size: int) -> Any:
    """A module ``(B, 3, S, S) -> (B, A, 5 + nc) float32`` equal to ``net`` in inference mode,
    with the head's grids as buffers (no host tensors created in ``forward``)."""
    import torch
    from torch import nn

    det = net.detect

    class Decoded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.shapes: list[tuple[int, int]] = []
            for i in range(det.nl):
                stride = float(det.stride[i])
                ny, nx = int(size // stride), int(size // stride)
                yv, xv = torch.meshgrid(
                    torch.arange(ny, dtype=torch.float32),
                    torch.arange(nx, dtype=torch.float32),
                    indexing="ij",
                )
                grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
                anchor_grid = (det.anchors[i].float() * stride).view(1, det.na, 1, 1, 2)
                self.register_buffer(f"grid{i}", grid, persistent=False)
                self.register_buffer(f"anchor_grid{i}", anchor_grid, persistent=False)
                self.shapes.append((ny, nx))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xs = self.net.head_inputs(x)
            out = []
            for i, (ny, nx) in enumerate(self.shapes):
                y = det.m[i](xs[i]).float()
                y = y.view(-1, det.na, det.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
                stride = float(det.stride[i])
                xy, wh, conf = y.split((2, 2, det.nc + 1), 4)
                xy = (xy * 2 + getattr(self, f"grid{i}")) * stride
                wh = (wh * 2) ** 2 * getattr(self, f"anchor_grid{i}")
                out.append(torch.cat((xy, wh, conf), 4).view(-1, det.na * nx * ny, det.no))
            return torch.cat(out, 1)

    return Decoded().eval()


class TorchDetector:
    """YOLOv5 in torch. ``device``: ``"cpu"`` (FP32, eager) or ``"cuda"``/``"cuda:N"`` (FP16,
    channels-last, CUDA graphs unless ``cuda_graphs`` is False).

    ``detect`` takes ``(B, 3, S, S)`` RGB [0, 1] as a numpy array or a tensor on the same
    device (any float dtype) and returns detections in letterbox pixels.
    """

    def __init__(
        self,
        manifest_path: Path,
        device: str = "cpu",
        max_batch: int = 8,
        cuda_graphs: bool = True,
        fp16: bool | None = None,
    ) -> None:
        import torch

        from models.export import load_weights

        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda and not torch.cuda.is_available():
            raise VigilError(
                f"backend torch-cuda needs an NVIDIA GPU and a CUDA build of torch "
                f"(this torch {torch.__version__} sees no CUDA device)"
            )
        net, manifest = load_weights(manifest_path)
        self.name = manifest.name
        self.model_file = manifest.file_path(manifest_path, "weights")
        self.input_size = int(manifest.input_size)
        self.num_outputs = manifest.nc + 5
        self.fp16 = self.on_cuda if fp16 is None else fp16
        self.backend = "torch-cuda" if self.on_cuda else "torch"
        self.precision = "fp16" if self.fp16 else "fp32"
        self.input_dtype = "float16" if self.fp16 else "float32"
        self.accepts_device = self.on_cuda
        self.cuda_graphs = cuda_graphs and self.on_cuda
        self.buckets = bucket_sizes(max_batch)
        model = _decode_module(net.fuse(), self.input_size).to(self.device)
        if self.fp16:
            model.net.half()  # the decode buffers stay FP32
        if self.on_cuda:
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self._model = model.requires_grad_(False)
        self._dtype = torch.float16 if self.fp16 else torch.float32
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._stream = torch.cuda.Stream(self.device) if self.on_cuda else None
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        s = self.input_size
        self._pinned = None
        self._staging = None
        if self.on_cuda:
            top = self.buckets[-1]
            self._pinned = torch.empty((top, 3, s, s), dtype=torch.float32).pin_memory()
            self._staging = torch.empty((top, 3, s, s), dtype=torch.float32, device=self.device)

    # -- the network -------------------------------------------------------------------
    def _forward(self, x: Any) -> Any:
        import torch

        if self.on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._model(x.to(self._dtype))

    def _graph(self, bucket: int) -> tuple[Any, Any, Any]:
        """(graph, static input, static output) for ``bucket``, captured on first use."""
        import torch

        if bucket in self._graphs:
            return self._graphs[bucket]
        s = self.input_size
        static_in = torch.zeros((bucket, 3, s, s), dtype=self._dtype, device=self.device)
        assert self._stream is not None
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream), torch.inference_mode():
            for _ in range(3):  # warm-up: cuDNN picks its kernels outside the capture
                self._forward(static_in)
        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
            static_out = self._forward(static_in)
        self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    def _to_device(self, batch: Any) -> Any:
        """The batch as a float tensor on the device (host input through pinned memory)."""
        import torch

        if isinstance(batch, np.ndarray):
            host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if not self.on_cuda:
                return host
            n = host.shape[0]
            if n > self._pinned.shape[0]:  # type: ignore[union-attr]
                return host.pin_memory().to(self.device, non_blocking=True)
            self._pinned[:n].copy_(host)  # type: ignore[index]
            self._staging[:n].copy_(self._pinned[:n], non_blocking=True)  # type: ignore[index]
            return self._staging[:n]  # type: ignore[index]
        if batch.device != self.device:
            raise VigilError(f"input on {batch.device}, detector on {self.device}")
        return batch

    def raw_device(self, batch: Any) -> Any:
        """``(B, A, 5 + nc) float32`` on the device (on the detector's stream when CUDA)."""
        import torch

        with torch.inference_mode():
            if not self.on_cuda:
                return self._forward(self._to_device(batch))
            assert self._stream is not None
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                x = self._to_device(batch)
                if not self.cuda_graphs:
                    return self._forward(x)
                runs = plan_buckets(x.shape[0], self.buckets)
                outs = []
                for start, stop, bucket in runs:
                    graph, static_in, static_out = self._graph(bucket)
                    static_in[: stop - start].copy_(x[start:stop])
                    graph.replay()
                    # A graph's output buffer is overwritten by its next replay: keep a copy
                    # when the batch takes more than one run.
                    out = static_out[: stop - start]
                    outs.append(out if len(runs) == 1 else out.clone())
                return outs[0] if len(outs) == 1 else torch.cat(outs)

    # -- the Detector protocol ---------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``(B, 3, S, S) float32`` -> raw predictions ``(B, A, 5 + nc) float32`` on the host."""
        raw = self.raw_device(batch)
        if self._stream is not None:
            self._stream.synchronize()
        return np.asarray(raw.float().cpu().numpy(), dtype=np.float32)

    def detect(
        self, batch: Any, params: PostprocessParams, timings: dict[str, float] | None = None
    ) -> list[Detections]:
        """Detections per image (letterbox pixels); ``timings`` gets ``infer`` and ``nms`` ms
        (the stream is synchronized between the two so the split is honest)."""
        import torch

        from models.postprocess_torch import postprocess_batch, to_detections

        t0 = time.perf_counter()
        raw = self.raw_device(batch)
        if self._stream is not None:
            self._stream.synchronize()
        t1 = time.perf_counter()
        with torch.inference_mode():
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    packed, counts = postprocess_batch(raw, params)
            else:
                packed, counts = postprocess_batch(raw, params)
            dets = to_detections(packed, counts)
        if timings is not None:
            timings.update(infer=(t1 - t0) * 1e3, nms=(time.perf_counter() - t1) * 1e3)
        return dets

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "cuda_graphs": self.cuda_graphs,
            "graph_buckets": sorted(self._graphs),
        }
