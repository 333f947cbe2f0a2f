from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import convert_checkpoint, load_checkpoint_records
from models.export import export_onnx, load_weights, save_weights
from models.yolov5 import YOLOv5
from pipeline.types import VigilError
from tests.factories import Exploit, shared


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Exploit(marker)}, evil)
    with pytest.raises(VigilError, match=r"refused to load (posix|os)\.system"):
        load_checkpoint_records(evil)
    assert not marker.exists()


def test_unknown_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(VigilError, match=r"refused to load torch\.nn\.modules\.linear\.Linear"):
        convert_checkpoint(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a zip")
    with pytest.raises(VigilError, match="not a torch checkpoint"):
        convert_checkpoint(junk)
    with pytest.raises(VigilError, match="not found"):
        convert_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(VigilError, match="not a YOLOv5 checkpoint"):
        convert_checkpoint(plain)


def test_network_shapes_for_every_scale() -> None:
    # parameter counts printed by the YOLOv5 v6 model summaries (unfused)
    for gd, gw, params in [(0.33, 0.25, 1_872_157), (0.33, 0.5, 7_235_389)]:
        net = YOLOv5(80, gd, gw).eval()
        assert sum(p.numel() for p in net.parameters()) == params
        with torch.no_grad():
            out = net(torch.zeros(2, 3, 320, 320))
        assert out.shape == (2, 6300, 85)


@pytest.fixture(scope="module")
def converted() -> tuple[YOLOv5, object]:
    return convert_checkpoint(shared("weights", "yolov5n.pt"))


def test_official_checkpoint_converts(converted: tuple[YOLOv5, object]) -> None:
    net, manifest = converted
    assert sum(p.numel() for p in net.parameters()) == 1_872_157
    assert manifest.name == "yolov5n" and manifest.nc == 80  # type: ignore[attr-defined]
    assert manifest.class_names[:3] == ["person", "bicycle", "car"]  # type: ignore[attr-defined]
    assert manifest.strides == [8, 16, 32]  # type: ignore[attr-defined]
    assert manifest.anchors_px[2][2] == [373.0, 326.0]  # type: ignore[attr-defined]


def test_weights_round_trip_and_onnx_parity(
    converted: tuple[YOLOv5, object], tmp_path: Path
) -> None:
    import onnxruntime as ort

    net, manifest = converted
    path = save_weights(net, manifest, tmp_path)  # type: ignore[arg-type]
    net2, _ = load_weights(path)
    x = torch.rand(2, 3, 320, 320)
    with torch.no_grad():
        ref = net(x).numpy()
        np.testing.assert_array_equal(net2(x).numpy(), ref)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(net2, onnx_path, 320)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": x.numpy()})[0]
    assert out.shape == (2, 6300, 85)
    # BN folding changes rounding only: boxes within a pixel hundredth, scores within 1e-3
    np.testing.assert_allclose(out[..., :4], ref[..., :4], atol=2e-2)
    np.testing.assert_allclose(out[..., 4:], ref[..., 4:], atol=1e-3)
