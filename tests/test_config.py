from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import (
    StreamConfig,
    TrackerConfig,
    VigilConfig,
    load_config,
    parse_stream,
    resolve_path,
)
from pipeline.types import VigilError
from trackers.registry import TRACKERS

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _same_keys(doc: Any, code: Any, where: str) -> None:
    """Every dataclass field (recursively) is in the YAML and nothing else is."""
    assert isinstance(doc, dict), where
    assert set(doc) == {f.name for f in fields(code)}, where
    for f in fields(code):
        value = getattr(code, f.name)
        if is_dataclass(value):
            _same_keys(doc[f.name], value, f"{where}.{f.name}")


def test_default_yaml_documents_every_knob_with_the_code_defaults() -> None:
    data = yaml.safe_load(DEFAULT_YAML.read_text())
    code = VigilConfig()
    _same_keys(data, code, "config")
    assert data["streams"] == []
    loaded = load_config(DEFAULT_YAML)
    # paths in the file are repo-relative spellings of the code's absolute defaults
    for cfg in (loaded, code):
        assert resolve_path(cfg.model.manifest).resolve() == resolve_path(code.model.manifest)
    as_dict = asdict(loaded)
    as_dict["model"]["manifest"] = code.model.manifest
    as_dict["tracker"]["embedder_model"] = code.tracker.embedder_model
    assert as_dict == asdict(code)


def test_every_registered_tracker_has_its_own_typed_section() -> None:
    t = TrackerConfig()
    for name, spec in TRACKERS.items():
        assert isinstance(getattr(t, spec.section), spec.params), name
        assert isinstance(t.params(name), spec.params), name
    chosen = load_config(None, {"tracker.deepsort.max_age": 7}).tracker
    assert chosen.params().max_age == 7
    assert chosen.params("deepsort-reference").max_age == 7  # the reference reads deepsort's
    assert load_config(None, {"tracker.name": "bytetrack"}).tracker.params().max_lost == 30


def test_a_stream_picks_its_own_tracker() -> None:
    from pipeline.wiring import build_tracker

    cfg = load_config(None, {"tracker.bytetrack.max_lost": 9})
    stream = parse_stream({"id": "door", "url": "rtsp://h/s", "tracker": "bytetrack"})
    tracker = build_tracker(cfg.tracker, stream.tracker)
    assert not tracker.uses_appearance and tracker.params.max_lost == 9  # type: ignore[attr-defined]
    default = build_tracker(cfg.tracker, parse_stream({"id": "a", "url": "rtsp://h/s"}).tracker)
    assert default.uses_appearance
    with pytest.raises(VigilError, match="tracker: 'sort' is not one of"):
        parse_stream({"id": "door", "url": "rtsp://h/s", "tracker": "sort"})


def test_bounds_come_from_field_metadata() -> None:
    """Every numeric knob has bounds, the defaults lie inside them, and the loader enforces
    exactly those bounds (checked at both ends for every knob)."""

    def walk(obj: Any, prefix: str) -> list[tuple[str, Any, Any]]:
        out = []
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                out += walk(value, f"{prefix}{f.name}.")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out.append((f"{prefix}{f.name}", f, value))
        return out

    knobs = walk(VigilConfig(), "")
    assert len(knobs) >= 28
    for key, f, default in knobs:
        assert "range" in f.metadata, f"{key} has no bounds"
        lo, hi = f.metadata["range"]
        assert lo <= default <= hi, key
        assert load_config(None, {key: type(default)(hi)})  # the bound itself is allowed
        step = 1 if isinstance(default, int) else 1e-6 * max(1.0, abs(hi))
        with pytest.raises(VigilError, match=f"{key}: .* is outside"):
            load_config(None, {key: hi + step})
        with pytest.raises(VigilError, match=f"{key}: .* is outside"):
            load_config(None, {key: lo - step})


@pytest.mark.parametrize("name", ["sample.yaml", "cameras.example.yaml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_config(DEFAULT_YAML.with_name(name))
    assert cfg.streams
    for s in cfg.streams:
        assert isinstance(s, StreamConfig)
        assert parse_stream(asdict(s)) == s  # what the loader built, REST would build too


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {conf_threshold: 1.5}", r"model.conf_threshold: 1.5 is outside \[0, 1\]"),
        ("batch: {max_batch: 0}", "batch.max_batch: 0 is outside"),
        ("batch: {max_batch: eight}", "batch.max_batch: expected an integer"),
        ("model: {backend: cuda}", "model.backend: 'cuda' is not one of"),
        ("modle: {}", "unknown key 'modle'"),
        ("tracker: {deepsort: {report_tentative: 1}}", "expected true or false"),
        ("tracker: {deepsort: {max_age: 0}}", r"tracker.deepsort.max_age: 0 is outside"),
        ("tracker: {name: sort}", "tracker.name: 'sort' is not one of"),
        ("model: [1, 2]", "config model: expected a mapping"),
        ("model: {conf_threshold: .nan}", "outside"),
        ("a: [unclosed", "invalid YAML"),
        ("streams: [{id: a, url: x}, {id: a, url: y}]", "the id 'a' is used twice"),
        ("streams: [{id: a, url: x, fps: 500}]", r"streams\[0\].fps: 500.0 is outside"),
        ("streams: {id: a}", "streams: expected a list of mappings"),
    ],
)
def test_bad_values_are_refused_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(VigilError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_overrides_and_missing_file(tmp_path: Path) -> None:
    cfg = load_config(None, {"model.backend": "openvino", "model.classes": ["person", "car"]})
    assert cfg.model.backend == "openvino" and cfg.model.classes == ("person", "car")
    with pytest.raises(VigilError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
