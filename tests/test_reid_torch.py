"""Re-id networks run as torch modules (the CUDA embedder's code, here on the CPU in FP32)
against ONNX Runtime, and the device-side crop gather against the numpy one."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.onnx_torch import load_torch_module, torch_module
from models.reid import OnnxEmbedder, sample_crops
from models.reid_torch import TorchEmbedder
from pipeline.config import DEFAULT_REID
from pipeline.types import VigilError
from tests.factories import SAMPLE_CLIP, shared

# Stated tolerances on the CPU: network outputs within 1e-4 of ONNX Runtime relative to their
# largest magnitude; embeddings (L2-normalised) at cosine similarity >= 0.9999.
REL_TOL = 1e-4
COSINE_MIN = 0.9999


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize("which", ["mobilenet", "osnet"])
def test_onnx_graph_as_torch_module_matches_onnxruntime(which: str) -> None:
    path = DEFAULT_REID if which == "mobilenet" else shared("weights", "osnet_x0_25_msmt17.onnx")
    module, shape = load_torch_module(path)
    assert shape[0] == -1 and shape[1] == 3
    x = np.random.default_rng(0).normal(size=(3, *shape[1:])).astype(np.float32)
    ref = ort_run(path, x)
    with torch.inference_mode():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


def test_unsupported_operators_are_named(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(VigilError, match="Einsum"):
        torch_module(model, "einsum.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(VigilError, match="not an ONNX model"):
        load_torch_module(junk)


def frames_and_boxes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Real frames of two sizes; boxes inside, across and outside the borders, tiny and huge,
    and one frame without boxes."""
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    images = []
    for i in range(300):
        ok, f = cap.read()
        assert ok
        if i in (250, 299):
            images.append(f)
    images.append(cv2.resize(images[0], (640, 480)))
    rng = np.random.default_rng(0)
    boxes = []
    for img in images:
        h, w = img.shape[:2]
        xy = rng.uniform(-30, [w, h], (6, 2))
        wh = rng.uniform(0.5, 400, (6, 2))
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
    boxes[1] = np.zeros((0, 4), np.float32)
    return images, boxes


def test_crops_gathered_with_torch_equal_the_numpy_crops() -> None:
    images, boxes = frames_and_boxes()
    emb = TorchEmbedder(DEFAULT_REID)
    got = emb.crops(images, boxes).numpy()
    ref = np.concatenate(
        [sample_crops(i, b, emb.crop_h, emb.crop_w) for i, b in zip(images, boxes, strict=True)]
    )
    assert got.shape == ref.shape == (12, 128, 64, 3)
    assert np.array_equal(got, ref)


def test_torch_embedder_matches_the_onnxruntime_embedder() -> None:
    images, boxes = frames_and_boxes()
    a = TorchEmbedder(DEFAULT_REID).embed(images, boxes)
    b = OnnxEmbedder(DEFAULT_REID).embed(images, boxes)
    assert [x.shape for x in a] == [y.shape for y in b] == [(6, 1280), (0, 1280), (6, 1280)]
    for x, y in zip(a, b, strict=True):
        if len(x):
            np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
            assert (x * y).sum(axis=1).min() >= COSINE_MIN
    nothing = TorchEmbedder(DEFAULT_REID).embed(images[:1], [np.zeros((0, 4), np.float32)])
    assert nothing[0].shape == (0, 1280)
