from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.export import export_onnx
from pipeline.types import VigilError
from tests.factories import tiny_yolo
from toolchain.quantize import quantize_int8


@pytest.mark.parametrize("scope", ["body", "conv"])
def test_int8_keeps_the_head_decode_in_float(tiny_onnx: Path, tmp_path: Path, scope: str) -> None:
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, (2, 3, 128, 128)).astype(np.float32) for _ in range(3)]
    out = tmp_path / "int8.onnx"
    facts = quantize_int8(tiny_onnx, out, iter(batches), "minmax", scope)
    assert facts["images"] == 6 and len(str(facts["data_sha256"])) == 64
    graph = onnx.load(str(out)).graph
    quantized_inputs = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    head = [n for n in graph.node if n.name.startswith("/model.24/")]
    assert head, "the Detect layer's nodes are in the graph"
    # nothing the Detect layer computes is quantized: its output convs and decode stay float
    head_outputs = {o for n in head for o in n.output}
    quantize_inputs = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    assert not head_outputs & quantize_inputs
    assert not any(n.op_type == "DequantizeLinear" for n in head)
    convs = [n for n in graph.node if n.op_type == "Conv" and n not in head]
    assert all(any(i in quantized_inputs for i in n.input) for n in convs)
    if scope == "body":
        sig = [
            n for n in graph.node if n.op_type == "Sigmoid" and not n.name.startswith("/model.24/")
        ]
        assert any(i in quantized_inputs for n in sig for i in n.input)

    import onnxruntime as ort

    x = batches[0]
    a = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"images": x}
    )[0]
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[
        0
    ]
    assert a.shape == b.shape
    assert np.abs(a[..., 4:] - b[..., 4:]).mean() < 0.05


def test_bad_arguments(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(VigilError, match="unknown calibration method"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", iter([]), "median")
    with pytest.raises(VigilError, match="unknown quantization scope"):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", iter([]), "minmax", "all")


def test_percentile_chooses_different_ranges_than_minmax(tmp_path: Path) -> None:
    from onnx import numpy_helper

    fp32 = tmp_path / "tiny.onnx"  # BN statistics set: no constant activations
    export_onnx(tiny_yolo(), fp32, imgsz=128)

    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 1, (2, 3, 128, 128)).astype(np.float32) for _ in range(2)]
    scales = {}
    for method in ("minmax", "percentile"):
        out = tmp_path / f"{method}.onnx"
        quantize_int8(fp32, out, iter(batches), method, "body")
        scales[method] = {
            t.name: numpy_helper.to_array(t)
            for t in onnx.load(str(out)).graph.initializer
            if t.name.endswith("_scale") and "Conv_output" in t.name
        }
    differ = [
        k for k in scales["minmax"] if not np.allclose(scales["minmax"][k], scales["percentile"][k])
    ]
    assert len(differ) > len(scales["minmax"]) // 2


def test_entropy_calibration_gets_a_real_histogram(monkeypatch: pytest.MonkeyPatch) -> None:
    # ONNX Runtime's quantize_static builds its entropy calibrator with 128 histogram bins for
    # 128 quantized bins: a single candidate threshold, i.e. min-max (measured: identical
    # scales). toolchain.quantize widens the histogram for the duration of the call. (A real
    # entropy calibration takes over a minute here: ORT's KL search is Python.)
    import importlib

    from toolchain.quantize import _entropy_histogram

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    seen: list[dict[str, object]] = []
    monkeypatch.setattr(
        ort_quantize, "create_calibrator", lambda *a, **kw: seen.append(kw["extra_options"])
    )
    with _entropy_histogram():
        ort_quantize.create_calibrator("m.onnx", extra_options={"symmetric": False})
    ort_quantize.create_calibrator("m.onnx", extra_options={})
    assert seen[0] == {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False}
    assert seen[1] == {}  # restored afterwards
