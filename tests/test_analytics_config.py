"""The rule schema: one-line refusals for bad lines and zones (config file, analytics file,
REST body alike), rules files, and `vigil replay --analytics` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import StreamConfig, load_config, load_rules, parse_stream
from pipeline.types import VigilError
from server.schema import rest_model
from tests.factories import REPO, SAMPLE_CLIP

LINE = {"id": "door", "points": [[0.5, 0.0], [0.5, 1.0]]}
ZONE = {"id": "desk", "polygon": [[0.1, 0.1], [0.4, 0.1], [0.4, 0.5]]}


def _zone(*points: list[float]) -> dict:
    return {"zones": [{**ZONE, "polygon": list(points)}]}


def _line(**changes: object) -> dict:
    return {"lines": [{**LINE, **changes}]}


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (_zone([0.1, 0.1], [0.2, 0.2]), r"zones\[0\].polygon: expected 3 to 64 points, got 2"),
        (_zone([0.1, 0.1], [0.2, 0.2], [0.1, 0.1]), "at least 3 distinct points"),
        (_zone([0.1, 0.1], [0.2, 0.2], [0.3, 0.3]), "on one line"),
        (_line(points=[[0.5, 0.0], [1.5, 1.0]]), r"points: coordinates must be in \[0, 1\]"),
        (_line(points=[[0.5, 0.0], [0.5, 0.0]]), "2 distinct points"),
        (_line(points=[[0.5, 0.0]]), "expected 2 points, got 1"),
        (_line(points=[0.5, 0.0]), r"expected a list of \[x, y\] points"),
        (_line(anchor="feet"), "anchor: 'feet' is not one of"),
        (_line(id="a b"), r"lines\[0\].id: 'a b' must match"),
        ({"lines": [{"points": LINE["points"]}]}, r"lines\[0\].id: required"),
        ({"lines": [LINE], "zones": [{**ZONE, "id": "door"}]}, "rule id 'door' is used twice"),
        ({"zones": [{**ZONE, "inertia": 0}]}, r"zones\[0\].inertia: 0 is outside"),
        (_line(colour="red"), r"unknown key 'lines\[0\].colour'"),
    ],
)
def test_bad_rules_are_refused_with_one_line(tmp_path: Path, rules: dict, message: str) -> None:
    stream = {"id": "cam", "url": "x.mp4", **rules}
    with pytest.raises(VigilError, match=message) as err:
        parse_stream(stream)
    assert "\n" not in str(err.value)
    path = tmp_path / "rules.yaml"  # the replay --analytics file says the same, naming itself
    path.write_text(yaml.safe_dump(rules))
    with pytest.raises(VigilError, match=message) as err:
        load_rules(path)
    assert str(err.value).startswith(str(path))


def test_rules_files_and_the_rest_model(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"lines": [LINE], "health": {"frozen_s": 3.0}}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"streams": [
        {"id": "cam", "url": "x.mp4", "rules_file": str(rules), "zones": [ZONE]},
    ]}))  # fmt: skip
    (stream,) = load_config(cfg).streams
    assert [r.id for r in stream.lines] == ["door"] and [z.id for z in stream.zones] == ["desk"]
    assert stream.health.frozen_s == 3.0
    (tmp_path / "bad.yaml").write_text("lines: []\nstreams: []\n")
    with pytest.raises(VigilError, match="unknown key 'streams'"):
        load_rules(tmp_path / "bad.yaml")
    with pytest.raises(VigilError, match="analytics file not found"):
        load_rules(tmp_path / "missing.yaml")
    model = rest_model(StreamConfig, "StreamIn")
    assert "rules_file" not in model.model_fields  # a server-side path is not a REST input
    body = model(id="cam", url="x.mp4", lines=[LINE], zones=[ZONE]).model_dump()
    assert parse_stream(body).lines[0].points == ((0.5, 0.0), (0.5, 1.0))


def test_replay_with_analytics_writes_events_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "replay", str(SAMPLE_CLIP), "--out", str(out),
         "--max-frames", "200", "--quiet", "--embedder", "histogram",
         "--analytics", str(REPO / "configs" / "sample-analytics.yaml")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "events.jsonl, counts.json" in r.stdout
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events and all(e["v"] == 1 and e["type"] == "event" for e in events)
    assert [e["seq"] for e in events] == list(range(len(events)))
    kinds = {e["kind"] for e in events}
    assert {"line_cross", "zone_enter", "zone_exit", "zone_loiter"} <= kinds
    counts = json.loads((out / "counts.json").read_text())
    # the shape the issue fixes: lines -> in/out -> class; zones -> counters -> class
    assert counts["lines"]["middle"] == {"in": {"person": 1}, "out": {}}  # the first person
    assert counts["lines"]["exit"] == {"in": {"person": 1}, "out": {}}
    table = counts["zones"]["table"]
    assert set(table) >= {"entered", "exited", "spawned", "max_occupancy", "mean_dwell_s"}
    assert table["entered"] == {"person": 1} == table["exited"] == table["max_occupancy"]
    assert table["mean_dwell_s"]["person"] > 10  # the first person stands there ~11 s
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"] == len(events) and "analytics" in summary["stages_ms"]
    bad = subprocess.run(
        [sys.executable, "-m", "cli.main", "replay", str(SAMPLE_CLIP), "--out", str(out),
         "--analytics", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("vigil: analytics file not found")
