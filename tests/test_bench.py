"""`vigil bench --quick`: the harness runs end to end (a smoke test, no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_bench_quick(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "server.serve", "bench", "--quick", "--out", str(tmp_path)]
    r = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    stages = {row["stage"] for row in result["stages"]}
    assert {"decode ffmpeg-pipe", "preprocess b8", "nms", "track deepsort", "encode v1"} <= stages
    assert any(s.startswith("infer onnxruntime int8 b8") for s in stages)
    assert any(s.startswith("embed mobilenet") for s in stages)
    assert all(row["fps"] > 0 for row in result["stages"])
    base = result["baselines"][0]
    assert base["vigil_fps"] > 0 and base["naive_fps"] > 0 and base["decode_only_fps"] > 0
    live = result["live"]
    assert live["runs"] and live["runs"][0]["messages"] > 0
    assert live["largest_n"] >= 0
    for plot in ("latency_cdf.png", "fps_vs_streams.png", "replay_stages.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    md = (tmp_path / "bench.md").read_text()
    assert "## Against the baselines" in md and "## Live capacity" in md
    assert "Vigil" in r.stdout and "largest N" in r.stdout
