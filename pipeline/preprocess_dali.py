"""Letterbox preprocessing as an NVIDIA DALI pipeline (``model.preprocess: dali``).

The same letterbox as :mod:`pipeline.preprocess` (scale by the longer side, the same rounding
of the resized size and of the centred padding, grey 114, RGB, /255, NCHW), as a DALI graph
fed by ``fn.external_source``:

    frames (H_i, W_i, 3) uint8 BGR, any mix of sizes  --(.gpu() on a GPU)-->
    resize to (new_h, new_w) [bilinear, no antialias: what cv2.INTER_LINEAR does]
    -> BGR to RGB -> slice (S, S) at (-pad_y, -pad_x), out of bounds padded with 114
    -> crop_mirror_normalize: /255, CHW, FP16 or FP32

The geometry per frame comes from :func:`pipeline.preprocess.letterbox_geometry` (the one
rounding rule) and is fed beside the frames, so the graph only executes it. On a GPU
(``device_id`` set) the output stays on the device: it is handed to the detector as a torch
tensor through DLPack, made ready on the caller's current CUDA stream, without a host round
trip. With ``device_id=None`` the same graph runs on DALI's CPU operators and returns numpy:
tests compare it with the numpy path on real frames (at most 1 grey level apart per pixel, from
DALI's float resampling against OpenCV's fixed-point one). Synchronous execution with a
prefetch depth of 1: a live batch is never held back behind another.

DALI is an optional extra (``pip install .[gpu]``), imported only here and only when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.preprocess import PAD_VALUE, LetterboxGeometry, letterbox_geometry
from pipeline.types import VigilError


def import_dali() -> Any:
    """``nvidia.dali``, or one line saying how to install it."""
    try:
        import nvidia.dali as dali
    except ImportError:
        raise VigilError(
            "--preprocess dali needs NVIDIA DALI, which is not installed: "
            "pip install '.[gpu]' (nvidia-dali-cuda130)"
        ) from None
    return dali


def geometry_inputs(geoms: Sequence[LetterboxGeometry]) -> tuple[list[Any], list[Any]]:
    """Per-frame DALI inputs: the resize target ``[new_h, new_w]`` and the slice anchor
    ``[-pad_y, -pad_x]`` (float32), from the numpy path's geometry."""
    sizes = [np.array([g.new_h, g.new_w], np.float32) for g in geoms]
    anchors = [np.array([-g.pad_y, -g.pad_x], np.float32) for g in geoms]
    return sizes, anchors


class DaliPreprocessor:
    """Letterbox a batch of BGR frames with DALI: ``(B, 3, S, S)`` RGB [0, 1] plus one
    geometry per frame. ``device_id``: a CUDA device (output: a torch tensor on it) or None
    (CPU operators, output: numpy). ``fp16``: FP16 output instead of FP32."""

    name = "dali"

    def __init__(
        self,
        size: int,
        max_batch: int,
        device_id: int | None = None,
        fp16: bool = False,
        threads: int = 2,
    ) -> None:
        dali = import_dali()
        fn: Any = importlib.import_module("nvidia.dali.fn")
        types: Any = importlib.import_module("nvidia.dali.types")

        self.size = size
        self.max_batch = max_batch
        self.device_id = device_id
        self.on_gpu = device_id is not None
        self.dtype = "float16" if fp16 else "float32"
        out_type = types.FLOAT16 if fp16 else types.FLOAT

        @dali.pipeline_def(
            batch_size=max_batch,
            num_threads=threads,
            device_id=device_id,
            prefetch_queue_depth=1,
            exec_async=False,
            exec_pipelined=False,
        )
        def letterbox() -> Any:
            frames = fn.external_source(name="frames", layout="HWC", dtype=types.UINT8)
            resize_to = fn.external_source(name="size", dtype=types.FLOAT)
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
            x = frames.gpu() if self.on_gpu else frames
            x = fn.resize(x, size=resize_to, interp_type=types.INTERP_LINEAR, antialias=False)
            x = fn.color_space_conversion(x, image_type=types.BGR, output_type=types.RGB)
            x = fn.slice(
                x,
                anchor,
                np.array([size, size], np.float32),
                axis_names="HW",
                normalized_anchor=False,
                normalized_shape=False,
                out_of_bounds_policy="pad",
                fill_values=PAD_VALUE,
            )
            return fn.crop_mirror_normalize(
                x, dtype=out_type, output_layout="CHW", mean=[0.0], std=[255.0]
            )

        try:
            self._pipe = letterbox()
            self._pipe.build()
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[0]
            raise VigilError(f"DALI could not build the preprocessing pipeline: {msg}") from None

    def _run(self, images: Sequence[np.ndarray], geoms: Sequence[LetterboxGeometry]) -> Any:
        sizes, anchors = geometry_inputs(geoms)
        self._pipe.feed_input("frames", [np.ascontiguousarray(i) for i in images])
        self._pipe.feed_input("size", sizes)
        self._pipe.feed_input("anchor", anchors)
        if not self.on_gpu:
            (out,) = self._pipe.run()
            return np.asarray(out.as_array())
        import torch

        stream = torch.cuda.current_stream(torch.device(f"cuda:{self.device_id}"))
        (out,) = self._pipe.run(cuda_stream=stream.cuda_stream)
        # Zero-copy view of DALI's output buffer; valid until the next run, by which time
        # the detector has copied it into its own input.
        return torch.from_dlpack(out.as_tensor())

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[Any, list[LetterboxGeometry]]:
        geoms = [letterbox_geometry(img.shape[0], img.shape[1], self.size) for img in images]
        if len(images) <= self.max_batch:
            return self._run(images, geoms), geoms
        parts = []
        for i in range(0, len(images), self.max_batch):  # more frames than the pipeline's batch
            out = self._run(images[i : i + self.max_batch], geoms[i : i + self.max_batch])
            parts.append(out.clone() if self.on_gpu else out)  # the next run reuses the buffer
        if self.on_gpu:
            import torch

            return torch.cat(parts), geoms
        return np.concatenate(parts), geoms
