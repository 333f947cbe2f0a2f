"""Person re-identification models: what a network expects (:class:`ReidPreprocess`) and the
manifest that travels with an imported ONNX file (:class:`ReidManifest`).

``vigil models import-reid FILE.onnx`` writes ``<registry>/<name>/<name>.json`` next to a copy
of the file: sha256, input name and size, output dimension and the preprocessing (channel
order, mean and standard deviation in ``[0, 1]`` pixel units, interpolation). Any runtime
(ONNX Runtime here; a torch/CUDA embedder elsewhere) turns crops into network input with
:meth:`ReidPreprocess.to_input`, so every runtime feeds a model the same numbers.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import atomic_write_bytes, sha256_file
from pipeline.types import VigilError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REID_SCHEMA = 1
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_size(text: str) -> tuple[int, int]:
    """``"256x128"`` (height x width) -> ``(256, 128)``; VigilError otherwise."""
    m = _SIZE.match(text.strip())
    if not m or not (8 <= int(m[1]) <= 1024 and 8 <= int(m[2]) <= 1024):
        raise VigilError(f"crop size must be HxW in pixels (8 to 1024 each), got {text!r}")
    return int(m[1]), int(m[2])


@dataclass(frozen=True)
class ReidPreprocess:
    """How crops become network input: ``(N, 3, height, width) float32``, NCHW.

    channel_order: ``rgb`` or ``bgr`` (the frames are BGR); mean/std: per channel in the
    network's channel order, in ``[0, 1]`` pixel units (``x = (pixel / 255 - mean) / std``);
    interpolation: how boxes are resampled to ``height x width`` (``bilinear`` or
    ``nearest``).
    """

    height: int = 128
    width: int = 64
    channel_order: str = "rgb"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "nearest"

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise VigilError(f"channel order must be rgb or bgr, got {self.channel_order!r}")
        if self.interpolation not in ("nearest", "bilinear"):
            raise VigilError(f"interpolation must be nearest or bilinear: {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise VigilError("mean and std need three values each, std positive")

    def resized(self, size: str) -> ReidPreprocess:
        """The same preprocessing at another crop size (``""``: unchanged)."""
        if not size:
            return self
        h, w = parse_size(size)
        return replace(self, height=h, width=w)

    def crops(self, image: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
        """Every box of one BGR frame resampled: ``(N, height, width, 3) uint8`` BGR."""
        if self.interpolation == "bilinear":
            return bilinear_crops(image, xyxy, self.height, self.width)
        return sample_crops(image, xyxy, self.height, self.width)

    def to_input(self, crops: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3) uint8`` BGR crops -> ``(N, 3, H, W) float32`` network input."""
        x = crops[..., ::-1] if self.channel_order == "rgb" else crops
        scale = np.float32(1 / 255) / np.asarray(self.std, np.float32)
        shift = np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)
        out = x.astype(np.float32) * scale - shift
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def sample_crops(image: np.ndarray, xyxy: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest-neighbour crops of every box (``(N, 4)`` xyxy source pixels), one gather:
    ``(N, out_h, out_w, 3) uint8``."""
    h, w = image.shape[:2]
    if xyxy.shape[0] == 0:
        return np.zeros((0, out_h, out_w, 3), np.uint8)
    b = np.clip(xyxy, 0, [w - 1, h - 1, w - 1, h - 1])
    bw = np.maximum(b[:, 2] - b[:, 0], 1.0)
    bh = np.maximum(b[:, 3] - b[:, 1], 1.0)
    xs = b[:, :1] + (np.arange(out_w, dtype=np.float32) + 0.5) * (bw / out_w)[:, None]
    ys = b[:, 1:2] + (np.arange(out_h, dtype=np.float32) + 0.5) * (bh / out_h)[:, None]
    xi = np.clip(xs.astype(np.int32), 0, w - 1)
    yi = np.clip(ys.astype(np.int32), 0, h - 1)
    return image[yi[:, :, None], xi[:, None, :]]


def bilinear_crops(image: np.ndarray, xyxy: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear crops of every box (pixel centres aligned, as ``cv2.resize``), four gathers
    for all boxes at once: ``(N, out_h, out_w, 3) uint8``."""
    h, w = image.shape[:2]
    if xyxy.shape[0] == 0:
        return np.zeros((0, out_h, out_w, 3), np.uint8)
    b = np.clip(xyxy.astype(np.float32), 0, [w, h, w, h])
    bw = np.maximum(b[:, 2] - b[:, 0], 1.0)
    bh = np.maximum(b[:, 3] - b[:, 1], 1.0)
    xs = b[:, :1] + (np.arange(out_w, dtype=np.float32) + 0.5) * (bw / out_w)[:, None] - 0.5
    ys = b[:, 1:2] + (np.arange(out_h, dtype=np.float32) + 0.5) * (bh / out_h)[:, None] - 0.5
    xs = np.clip(xs, 0, w - 1)
    ys = np.clip(ys, 0, h - 1)
    x0, y0 = xs.astype(np.int32), ys.astype(np.int32)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx = (xs - x0)[:, None, :, None]
    fy = (ys - y0)[:, :, None, None]
    img = image.astype(np.float32)
    r0, r1 = y0[:, :, None], y1[:, :, None]
    c0, c1 = x0[:, None, :], x1[:, None, :]
    top = img[r0, c0] * (1 - fx) + img[r0, c1] * fx
    bottom = img[r1, c0] * (1 - fx) + img[r1, c1] * fx
    return np.clip(top * (1 - fy) + bottom * fy + 0.5, 0, 255).astype(np.uint8)


@dataclass
class ReidManifest:
    """An imported re-identification network: the JSON beside its ONNX file."""

    name: str
    file: str  # the ONNX file, relative to the manifest's folder
    sha256: str
    input_name: str
    output_dim: int
    preprocess: dict[str, Any] = field(default_factory=dict)  # ReidPreprocess fields
    source: str = ""  # the file it was imported from
    version: str = "1.0.0"
    kind: str = "reid"
    schema: int = REID_SCHEMA

    def preprocessing(self) -> ReidPreprocess:
        p = dict(self.preprocess)
        for key in ("mean", "std"):
            if key in p:
                p[key] = tuple(float(v) for v in p[key])
        try:
            return ReidPreprocess(**p)
        except TypeError as e:
            raise VigilError(f"re-id manifest {self.name}: bad preprocess ({e})") from None

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, (json.dumps(asdict(self), indent=1) + "\n").encode())

    @staticmethod
    def load(path: Path) -> ReidManifest:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VigilError(f"re-id manifest not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VigilError(f"{path}: not a JSON file ({e})") from None
        if not isinstance(data, dict) or data.get("kind") != "reid":
            raise VigilError(f"{path}: not a re-id manifest (write one: vigil models import-reid)")
        try:
            return ReidManifest(**data)
        except TypeError as e:
            raise VigilError(f"{path}: not a re-id manifest ({e})") from None

    def onnx_path(self, manifest_path: Path) -> Path:
        """The model file, checked against the recorded sha256."""
        path = manifest_path.parent / self.file
        if not path.is_file():
            raise VigilError(f"re-id model file not found: {path}")
        if sha256_file(path) != self.sha256:
            raise VigilError(f"{path}: sha256 differs from its manifest (re-run import-reid)")
        return path


def inspect_onnx(path: Path, size: str = "") -> tuple[str, int, int, int]:
    """Input name, input height and width, output dimension of a re-id ONNX file: the input
    must be ``(batch, 3, H, W)``, the output ``(batch, D)``. ``size`` gives H and W when the file
    leaves them open. Runs the model once on a batch of two to check it."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own types for a bad file
        raise VigilError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
        shapes = [i.shape for i in inputs]
        raise VigilError(f"{path}: expected one (batch, 3, H, W) input, found {shapes}")
    h, w = inputs[0].shape[2], inputs[0].shape[3]
    if size:
        h, w = parse_size(size)
    elif not (isinstance(h, int) and isinstance(w, int)):
        raise VigilError(f"{path}: the input size is not fixed in the file; give --size HxW")
    x = np.zeros((2, 3, int(h), int(w)), np.float32)
    feed = {inputs[0].name: x}
    try:
        out = session.run(None, feed)[0]
    except Exception as e:
        raise VigilError(f"{path}: failed on a {h}x{w} input ({str(e).splitlines()[0]})") from None
    if len(outputs) < 1 or out.ndim != 2 or out.shape[0] != 2:
        raise VigilError(f"{path}: expected a (batch, D) embedding output, got {out.shape}")
    return inputs[0].name, int(h), int(w), int(out.shape[1])


def import_reid(
    onnx_file: Path, registry: Path, name: str, preprocess: ReidPreprocess, size: str = ""
) -> Path:
    """Copy ``onnx_file`` into ``registry/<name>/`` and write its manifest; returns the
    manifest path. The preprocessing's size is the file's own input size (or ``size``)."""
    if not onnx_file.is_file():
        raise VigilError(f"re-id model not found: {onnx_file}")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", name):
        raise VigilError(f"re-id model name must be letters, digits, _ or -: {name!r}")
    input_name, h, w, dim = inspect_onnx(onnx_file, size)
    folder = registry / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.onnx"
    if target.resolve() != onnx_file.resolve():
        tmp = folder / f".{name}.onnx.tmp"
        shutil.copyfile(onnx_file, tmp)
        tmp.replace(target)
    manifest = ReidManifest(
        name=name,
        file=target.name,
        sha256=sha256_file(target),
        input_name=input_name,
        output_dim=dim,
        preprocess=asdict(replace(preprocess, height=h, width=w)),
        source=onnx_file.name,
    )
    path = folder / f"{name}.json"
    manifest.save(path)
    return path
