from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.config import VigilConfig, load_config, resolve_path
from pipeline.types import VigilError

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def test_default_yaml_documents_every_knob_with_the_code_defaults() -> None:
    data = yaml.safe_load(DEFAULT_YAML.read_text())
    code = VigilConfig()
    assert set(data) == {f.name for f in fields(code)}
    for section in fields(code):
        sub = getattr(code, section.name)
        if section.name == "streams":
            assert data["streams"] == []
            continue
        assert is_dataclass(sub)
        assert set(data[section.name]) == {f.name for f in fields(sub)}, section.name
    loaded = load_config(DEFAULT_YAML)
    # paths in the file are repo-relative spellings of the code's absolute defaults
    for cfg in (loaded, code):
        assert resolve_path(cfg.model.manifest).resolve() == resolve_path(code.model.manifest)
    as_dict = asdict(loaded)
    as_dict["model"]["manifest"] = code.model.manifest
    as_dict["tracker"]["embedder_model"] = code.tracker.embedder_model
    assert as_dict == asdict(code)


@pytest.mark.parametrize("name", ["sample.yaml", "cameras.example.yaml"])
def test_example_configs_load(name: str) -> None:
    from pipeline.config import validate_stream

    cfg = load_config(DEFAULT_YAML.with_name(name))
    assert cfg.streams and all(validate_stream(s) for s in cfg.streams)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {conf_threshold: 1.5}", r"model.conf_threshold: 1.5 is outside \[0, 1\]"),
        ("batch: {max_batch: 0}", "batch.max_batch: 0 is outside"),
        ("batch: {max_batch: eight}", "batch.max_batch: expected an integer"),
        ("model: {backend: cuda}", "model.backend: 'cuda' is not one of"),
        ("modle: {}", "unknown key 'modle'"),
        ("tracker: {report_tentative: 1}", "expected true or false"),
        ("model: [1, 2]", "config model: expected a mapping"),
        ("model: {conf_threshold: .nan}", "outside"),
        ("a: [unclosed", "invalid YAML"),
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
