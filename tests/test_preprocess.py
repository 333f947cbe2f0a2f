from __future__ import annotations

import numpy as np
import pytest

from pipeline.preprocess import (
    PAD_VALUE,
    CpuPreprocessor,
    boxes_to_letterbox,
    boxes_to_source,
    letterbox_geometry,
    letterbox_into,
)


@pytest.mark.parametrize(
    ("h", "w"),
    [(480, 640), (432, 768), (576, 768), (1080, 1920), (640, 480), (320, 320), (100, 900)],
)
def test_geometry_fits_and_centres(h: int, w: int) -> None:
    g = letterbox_geometry(h, w, 320)
    assert max(g.new_w, g.new_h) == 320
    assert g.new_w <= 320 and g.new_h <= 320
    assert abs(g.pad_x - (320 - g.new_w) / 2) <= 1 and abs(g.pad_y - (320 - g.new_h) / 2) <= 1
    assert g.scale == pytest.approx(min(320 / h, 320 / w))


def test_letterbox_pixels_and_border() -> None:
    img = np.zeros((240, 640, 3), np.uint8)
    img[:, :, 2] = 200  # red in BGR
    out = np.zeros((320, 320, 3), np.uint8)
    g = letterbox_into(img, out)
    assert (g.new_w, g.new_h) == (320, 120)
    assert (out[: g.pad_y] == PAD_VALUE).all() and (out[g.pad_y + g.new_h :] == PAD_VALUE).all()
    inner = out[g.pad_y : g.pad_y + g.new_h]
    assert (inner[..., 2] == 200).all() and (inner[..., :2] == 0).all()


def test_inverse_round_trip() -> None:
    rng = np.random.default_rng(0)
    for h, w in [(480, 640), (432, 768), (1080, 1920), (700, 300)]:
        g = letterbox_geometry(h, w, 320)
        xy = rng.uniform(0, 1, (50, 2)) * [w, h]
        wh = rng.uniform(1, 100, (50, 2))
        boxes = np.concatenate((xy, np.minimum(xy + wh, [w, h])), axis=1).astype(np.float32)
        back = boxes_to_source(boxes_to_letterbox(boxes, g), g)
        np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_inverse_clips_to_frame() -> None:
    g = letterbox_geometry(480, 640, 320)
    out = boxes_to_source(np.array([[-50, -50, 400, 400]], np.float32), g)
    assert out.min() >= 0 and out[0, 2] <= 640 and out[0, 3] <= 480
    assert boxes_to_source(np.zeros((0, 4), np.float32), g).shape == (0, 4)


def test_preprocessor_tensor_layout() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR -> channel 2 in RGB
    pre = CpuPreprocessor(320, 4)
    batch, geoms = pre([img, img, img])
    assert batch.shape == (3, 3, 320, 320) and batch.dtype == np.float32
    g = geoms[0]
    centre = batch[0, :, g.pad_y + 10, 160]
    np.testing.assert_allclose(centre, [0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(batch[0, :, 0, 0], [PAD_VALUE / 255] * 3, atol=1e-6)
    # more frames than the staging buffer: it grows, results stay right
    assert pre([img] * 6)[0].shape[0] == 6
