"""Appearance embeddings in torch, on the detector's device: the re-id ONNX (the bundled
MobileNetV2 by default) run as a torch module (:mod:`models.onnx_torch`), FP16 and
channels-last on CUDA, FP32 on the CPU.

The crops are gathered on the device: each frame that has boxes is uploaded once (through a
reused pinned buffer, asynchronously), and every box's ``crop_h x crop_w`` nearest-neighbour
samples are one indexing operation per frame, with the same index arithmetic as
:func:`models.reid_manifest.sample_crops` (float64, truncation), so on the CPU the crops are
identical to the ONNX Runtime embedder's. Then BGR -> RGB, ImageNet normalisation, one network
call for all boxes of the batch, L2 normalisation, and one device-to-host copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.reid_manifest import IMAGENET_MEAN, IMAGENET_STD
from pipeline.types import VigilError


class TorchEmbedder:
    """``embed(images, boxes)`` as :class:`models.reid.Embedder`; ``device`` ``"cpu"`` or
    ``"cuda"``/``"cuda:N"``."""

    def __init__(self, path: Path, device: str = "cpu", name: str = "mobilenet") -> None:
        import torch

        from models.onnx_torch import load_torch_module

        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda and not torch.cuda.is_available():
            raise VigilError("the CUDA embedder needs an NVIDIA GPU and a CUDA build of torch")
        module, shape = load_torch_module(path)
        if len(shape) != 4 or shape[1] != 3 or min(shape[2:]) <= 0:
            raise VigilError(f"{path}: expected an embedder input (N, 3, H, W), got {shape}")
        self.name = name
        self.crop_h, self.crop_w = int(shape[2]), int(shape[3])
        self._dtype = torch.float16 if self.on_cuda else torch.float32
        net = module.to(self.device)
        if self.on_cuda:
            net = net.half().to(memory_format=torch.channels_last)
        self._net = net.requires_grad_(False)
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).to(self.device)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).to(self.device)
        self._pinned: Any = None
        with torch.inference_mode():
            probe = torch.zeros((1, 3, self.crop_h, self.crop_w), device=self.device)
            self.dim = int(self._run(probe).shape[1])

    def _run(self, x: Any) -> Any:
        import torch

        if self.on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._net(x.to(self._dtype)).float()

    def _upload(self, images: list[np.ndarray]) -> list[Any]:
        """Each image as a ``(H, W, 3) uint8`` device tensor (zero-copy views on the CPU)."""
        import torch

        if not self.on_cuda:
            return [torch.from_numpy(np.ascontiguousarray(img)) for img in images]
        total = sum(img.size for img in images)
        if self._pinned is None or self._pinned.numel() < total:
            self._pinned = torch.empty(total, dtype=torch.uint8).pin_memory()
        out, offset = [], 0
        for img in images:  # a loop over frames, not boxes
            host = self._pinned[offset : offset + img.size]
            host.copy_(torch.from_numpy(np.ascontiguousarray(img).reshape(-1)))
            out.append(host.to(self.device, non_blocking=True).view(img.shape))
            offset += img.size
        return out

    def crops(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> Any:
        """``(N, crop_h, crop_w, 3) uint8`` on the device: every box of every image, in order."""
        import torch

        busy = [i for i, b in enumerate(boxes) if len(b)]
        frames = self._upload([images[i] for i in busy])
        parts = []
        for i, frame in zip(busy, frames, strict=True):
            h, w = frame.shape[:2]
            b = torch.from_numpy(np.asarray(boxes[i], np.float64)).to(self.device)
            upper = torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=b.dtype, device=self.device)
            b = torch.minimum(b.clamp(min=0), upper)
            bw = (b[:, 2] - b[:, 0]).clamp(min=1.0)
            bh = (b[:, 3] - b[:, 1]).clamp(min=1.0)
            ax = torch.arange(self.crop_w, dtype=torch.float32, device=self.device) + 0.5
            ay = torch.arange(self.crop_h, dtype=torch.float32, device=self.device) + 0.5
            xs = b[:, :1] + ax.double() * (bw / self.crop_w)[:, None]
            ys = b[:, 1:2] + ay.double() * (bh / self.crop_h)[:, None]
            xi = xs.to(torch.int32).clamp(0, w - 1).long()
            yi = ys.to(torch.int32).clamp(0, h - 1).long()
            parts.append(frame[yi[:, :, None], xi[:, None, :]])
        if not parts:
            return torch.zeros((0, self.crop_h, self.crop_w, 3), dtype=torch.uint8)
        return torch.cat(parts)

    def embed(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images: BGR ``(H, W, 3) uint8``; boxes: ``(N_i, 4) float32`` xyxy source pixels.
        Returns one ``(N_i, dim) float32`` array per image, rows L2-normalised."""
        import torch

        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [np.zeros((0, self.dim), np.float32) for _ in boxes]
        with torch.inference_mode():
            crops = self.crops(images, boxes)
            x = crops[..., [2, 1, 0]].float() / 255.0
            x = ((x - self._mean) / self._std).permute(0, 3, 1, 2)
            feats = torch.nn.functional.normalize(self._run(x), dim=1, eps=1e-12)
            rows = feats.cpu().numpy().astype(np.float32, copy=False)
        return list(np.split(rows, np.cumsum(counts)[:-1]))
