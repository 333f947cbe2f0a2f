"""Accuracy regression on the MOT dev sequences with the default configuration.

Measured with `vigil eval` on the 2-core dev machine (README), with the bundled INT8 model
(min-max calibration on the coco128 tune split and the sample videos), detections from 0.1, the
vectorized DeepSORT with its weak-detection stage and MobileNetV2 embeddings: TUD-Stadtmitte
HOTA 0.594, MOTA 0.762, IDF1 0.829; PETS09-S3MF1 HOTA 0.626, MOTA 0.850, IDF1 0.883. A change
that loses more than 0.03 fails (the tolerance allows for ONNX Runtime kernels that round
differently on other CPUs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import shared

MEASURED = {
    "TUD-Stadtmitte": {"HOTA": 0.594, "MOTA": 0.762, "IDF1": 0.829},
    "PETS09-S3MF1": {"HOTA": 0.626, "MOTA": 0.850, "IDF1": 0.883},
}
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    seqs = [shared("mot", name) for name in MEASURED]
    out = tmp_path_factory.mktemp("eval")
    cmd = [sys.executable, "-m", "cli.main", "eval", *map(str, seqs), "--out", str(out)]
    r = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "HOTA" in r.stdout and "COMBINED" in r.stdout
    return json.loads((Path(out) / "metrics.json").read_text())["metrics"]


@pytest.mark.parametrize("seq", list(MEASURED))
def test_no_accuracy_regression(metrics: dict[str, dict[str, float]], seq: str) -> None:
    for key, value in MEASURED[seq].items():
        assert metrics[seq][key] >= value - TOLERANCE, (seq, key, metrics[seq][key])
    assert 0 < metrics[seq]["HOTA"] <= 1
