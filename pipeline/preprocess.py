"""Letterbox preprocessing on the CPU (numpy/OpenCV) and its inverse.

Letterbox (YOLOv5 convention): scale by ``r = min(S / H, S / W)`` so the frame fits in an
``S x S`` square, resize to ``(round(W r), round(H r))`` with bilinear filtering, centre it, and
fill the border with grey 114. A point ``(x, y)`` of the source maps to
``(x r + pad_x, y r + pad_y)`` in the square; :func:`boxes_to_source` is the inverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True, slots=True)
class LetterboxGeometry:
    """How one source frame sits in the square input.

    scale: source pixels -> input pixels; pad_x, pad_y: left and top border in input pixels;
    new_w, new_h: size of the resized frame inside the square; src_w, src_h: source size.
    """

    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int
    src_w: int
    src_h: int


def letterbox_geometry(src_h: int, src_w: int, size: int) -> LetterboxGeometry:
    if src_h <= 0 or src_w <= 0:
        raise ValueError(f"frame size must be positive, got {src_w}x{src_h}")
    r = min(size / src_h, size / src_w)
    new_w, new_h = round(src_w * r), round(src_h * r)
    pad_x = round((size - new_w) / 2 - 0.1)
    pad_y = round((size - new_h) / 2 - 0.1)
    return LetterboxGeometry(r, pad_x, pad_y, new_w, new_h, src_w, src_h)


def letterbox_into(image: np.ndarray, out: np.ndarray) -> LetterboxGeometry:
    """Letterbox ``image`` ``(H, W, 3) uint8`` into ``out`` ``(S, S, 3) uint8`` in place."""
    size = out.shape[0]
    g = letterbox_geometry(image.shape[0], image.shape[1], size)
    out[...] = PAD_VALUE
    region = out[g.pad_y : g.pad_y + g.new_h, g.pad_x : g.pad_x + g.new_w]
    if (g.new_w, g.new_h) == (g.src_w, g.src_h):
        region[...] = image
    else:
        cv2.resize(image, (g.new_w, g.new_h), dst=region, interpolation=cv2.INTER_LINEAR)
    return g


class CpuPreprocessor:
    """Letterbox + normalize a batch of BGR frames into the detector's input tensor.

    Output: ``(B, 3, S, S) float32`` RGB in [0, 1], NCHW, plus one geometry per frame.
    The uint8 staging buffer is reused between calls (bounded by ``max_batch``).
    """

    name = "numpy"

    def __init__(self, size: int, max_batch: int) -> None:
        self.size = size
        self._staging = np.full((max_batch, size, size, 3), PAD_VALUE, np.uint8)

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[LetterboxGeometry]]:
        n = len(images)
        if n > self._staging.shape[0]:
            self._staging = np.full((n, self.size, self.size, 3), PAD_VALUE, np.uint8)
        geoms = [letterbox_into(img, self._staging[i]) for i, img in enumerate(images)]
        blob = cv2.dnn.blobFromImages(
            list(self._staging[:n]), scalefactor=1.0 / 255.0, swapRB=True, crop=False
        )
        return np.asarray(blob, dtype=np.float32), geoms


def boxes_to_source(xyxy: np.ndarray, g: LetterboxGeometry) -> np.ndarray:
    """Map ``(N, 4) float32`` boxes from letterbox pixels back to source pixels, clipped."""
    out = (xyxy - np.array([g.pad_x, g.pad_y, g.pad_x, g.pad_y], np.float32)) / np.float32(g.scale)
    np.clip(out, 0, np.array([g.src_w, g.src_h, g.src_w, g.src_h], np.float32), out=out)
    return out.astype(np.float32, copy=False)


def boxes_to_letterbox(xyxy: np.ndarray, g: LetterboxGeometry) -> np.ndarray:
    """Forward map of :func:`boxes_to_source` (no clipping): source pixels -> letterbox pixels."""
    pad = np.array([g.pad_x, g.pad_y, g.pad_x, g.pad_y], np.float32)
    return (xyxy * np.float32(g.scale) + pad).astype(np.float32)
