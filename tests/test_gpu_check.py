"""The one-call GPU check runs end to end on the CPU (``--smoke``), and the carry it needs is
built correctly."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from benchmarks.gpu_carry import device_command, slim_wheel
from benchmarks.gpu_check import main


def test_smoke_runs_every_section_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--out", str(out), "--smoke"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "gpu_check.png"]
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["smoke"] is True and r["device"] == "cpu"
    assert not [k for k, v in r.items() if isinstance(v, dict) and ("error" in v or "skipped" in v)]
    assert r["environment"]["decode"]["path"] == "cpu"
    par = r["parity"]["fp32 eager"]
    assert par["frames"] == par["frames_same_count"] == 2 and par["reference_boxes"] >= 2
    assert par["boxes_matched_iou_0.5"] == par["reference_boxes"] and par["max_abs_px"] < 0.01
    assert [(t["batch"], t["variant"]) for t in r["throughput"]] == [
        (1, "fp32 eager"),
        (2, "fp32 eager"),
    ]
    assert all(t["forward_fps"] > 0 and t["detect_fps"] > 0 for t in r["throughput"])
    replays = {row["backend"]: row for row in r["replay"]}
    assert set(replays) == {"torch", "onnxruntime"}
    assert all(row["frames"] == 20 and row["fps"] > 0 for row in replays.values())
    assert replays["torch"]["precision"] == "fp32" and replays["onnxruntime"]["precision"] == "int8"
    assert set(replays["torch"]["stages_ms"]) >= {"decode", "preprocess", "infer", "embed"}
    live = r["live"]
    assert live["resolution"] == "1920x1080" and live["runs"][0]["streams"] == 1
    assert live["runs"][0]["messages"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "## Parity" in md and "## Replay, 1080p" in md and "## Live" in md


def test_slim_wheel_drops_files_and_their_record_lines(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    record = "pkg/__init__.py,sha256=x,1\npkg/weights/w.pt,sha256=y,9\npkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/weights/w.pt", b"\0" * 100_000)
        z.writestr("pkg-1.0.dist-info/RECORD", record)
    assert slim_wheel(wheel, "pkg/weights/") > 0
    with zipfile.ZipFile(wheel) as z:
        assert z.namelist() == ["pkg/__init__.py", "pkg-1.0.dist-info/RECORD"]
        assert "weights" not in z.read("pkg-1.0.dist-info/RECORD").decode()
    cmd = device_command(Path(".gpu"))
    assert "--no-index" in cmd and ".gpu/*.whl" in cmd and "benchmarks.gpu_check --out $OUT" in cmd
