"""Unlabeled images for the model toolchain: INT8 calibration and pruning recovery.

A source is a video file, a folder of frames (both decoded by FFmpeg, frames spread evenly over
the whole clip), or a COCO-layout folder (``annotations/*.json`` + ``images/``), of which only
the ``tune`` split is used (``evaluation.detection.split_ids``): the ``eval`` split, where
accuracy is measured, is never seen by calibration or distillation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.types import VigilError


def _is_coco(path: Path) -> bool:
    return path.is_dir() and (path / "annotations").is_dir() and (path / "images").is_dir()


def _video_frames(spec: str, count: int) -> list[np.ndarray]:
    from pipeline.sources import FFmpegSource

    src = FFmpegSource(spec, stream_id="toolchain")
    total = src.info.frame_count or count * 10
    step = max(1, total // count)
    kept = [f.image.copy() for f in src.frames() if f.index % step == 0]
    return kept[:count]


def gather_images(sources: Sequence[str], limit: int, purpose: str) -> list[np.ndarray]:
    """Up to ``limit`` BGR ``(H, W, 3) uint8`` images, shared evenly between ``sources``."""
    if not sources:
        raise VigilError(f"{purpose} needs images: pass one or more videos, frame or COCO folders")
    if limit < 1:
        raise VigilError(f"the number of {purpose} images must be at least 1, got {limit}")
    per_source = max(1, limit // len(sources))
    images: list[np.ndarray] = []
    for spec in sources:
        path = Path(spec)
        if not path.exists():
            raise VigilError(f"{purpose} source not found: {spec}")
        if _is_coco(path):
            from evaluation.detection import tune_images

            files = tune_images(path)[:per_source]
            loaded = [cv2.imread(str(f)) for f in files]
            kept = [im for im in loaded if im is not None]
            if len(kept) < len(files):
                raise VigilError(f"{spec}: {len(files) - len(kept)} unreadable images")
        else:
            kept = _video_frames(spec, per_source)
        if not kept:
            raise VigilError(f"{spec}: no {purpose} images could be read")
        images.extend(kept)
    return images


def images_digest(images: Sequence[np.ndarray]) -> str:
    """sha256 over the images' pixels, in order: names the data a model was tuned on."""
    h = hashlib.sha256()
    for im in images:
        h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()


def letterbox_batches(
    images: Sequence[np.ndarray], size: int, batch: int = 8
) -> Iterator[np.ndarray]:
    """``(B, 3, S, S) float32`` letterboxed batches of ``images`` (the serving input)."""
    from pipeline.preprocess import CpuPreprocessor

    pre = CpuPreprocessor(size, batch)
    for i in range(0, len(images), batch):
        yield pre(list(images[i : i + batch]))[0]
