"""`vigil bench --quick`: the harness runs end to end (a smoke test, no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.factories import REPO


def test_bench_quick(tmp_path: Path) -> None:
    # by registry name: every section (stages, replay, baselines) resolves it the same way
    cmd = [sys.executable, "-m", "cli.main", "bench", "--quick", "--model", "yolov5n"]
    cmd += ["--out", str(tmp_path)]
    r = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    stages = {row["stage"] for row in result["stages"]}
    assert {"decode ffmpeg-pipe", "preprocess b8", "nms", "encode v1"} <= stages
    assert "track deepsort (sample clip)" in stages
    assert {"track deepsort, 20 people (1280-d)", "track bytetrack, 20 people (1280-d)"} <= stages
    assert any(s.startswith("infer onnxruntime int8 b8") for s in stages)
    assert any(s.startswith("embed mobilenet") for s in stages)
    assert all(row["fps"] > 0 for row in result["stages"])
    base = result["baselines"][0]
    assert base["vigil_fps"] > 0 and base["naive_fps"] > 0 and base["decode_only_fps"] > 0
    live = result["live"]
    assert live["runs"] and live["runs"][0]["messages"] > 0
    held = [
        r["streams"]
        for r in live["runs"]
        if r["p99_ms"] is not None
        and r["p99_ms"] <= live["p99_bound_ms"]
        and r["drop_fraction"] <= live["drop_bound"]
    ]
    # the search stops at the first N that fails: the largest N is the last that held
    assert live["largest_n"] == (max(held) if held else 0)
    assert all(r["streams"] in held for r in live["runs"][:-1])
    for plot in ("latency_cdf.png", "fps_vs_streams.png", "replay_stages.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    assert [(r["tracks"], r["health"]) for r in result["analytics"]] == [
        (n, h) for n in (10, 50, 200) for h in (False, True)
    ]  # fmt: skip
    assert all(r["median_us"] > 0 and r["events_per_frame"] > 0 for r in result["analytics"])
    md = (tmp_path / "bench.md").read_text()
    assert "## Against the baselines" in md and "## Live capacity" in md
    assert "## Analytics" in md
    assert "Vigil" in r.stdout and "largest N" in r.stdout


def test_every_bench_section_resolves_a_bare_onnx_and_a_name(tiny_onnx: Path) -> None:
    from benchmarks.report import _fp32_model
    from pipeline.config import load_config
    from pipeline.wiring import resolve_model

    bare = load_config(None, {"model.manifest": str(tiny_onnx)})
    assert _fp32_model(bare) == tiny_onnx == resolve_model(bare.model).onnx
    named = load_config(None, {"model.manifest": "yolov5n"})
    assert _fp32_model(named).name == "yolov5n-320.onnx"
    assert resolve_model(named.model).onnx.name == "yolov5n-320-int8.onnx"
