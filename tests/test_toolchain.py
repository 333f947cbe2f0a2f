"""The model registry and the toolchain commands end to end (prune, quantize, report)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.export import export_onnx, load_weights, save_weights
from models.manifest import ModelManifest, sha256_file
from models.registry import entries, is_reference, resolve
from pipeline.config import DEFAULT_MODEL, load_config
from pipeline.types import VigilError
from pipeline.wiring import resolve_model
from tests.factories import REPO, SAMPLE_CLIP, random_images, shared, tiny_manifest, tiny_yolo
from tests.factories import TINY_SIZE as SIZE
from toolchain.distill import DistillSettings
from toolchain.prune import prune_model
from toolchain.staging import swap_in


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("vigil")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, cwd=REPO)


def _copy_zoo(root: Path, name: str = "mine") -> Path:
    """The bundled yolov5n copied into a user registry under a new name; returns its manifest."""
    folder = root / name
    shutil.copytree(DEFAULT_MODEL.parent, folder)
    m = ModelManifest.load(folder / "yolov5n.json")
    (folder / "yolov5n.json").unlink()
    m.name, m.version = name, "1.1.0"
    m.lineage = {"parent": {"name": "yolov5n", "version": "1.0.0", "weights_sha256": "x"}}
    m.save(folder / f"{name}.json")
    return folder / f"{name}.json"


def test_registry_resolves_names_versions_and_shadows_the_zoo(tmp_path: Path) -> None:
    assert is_reference("yolov5n") and is_reference("yolov5n-p30@1.1.0")
    assert not is_reference("models/zoo/yolov5n/yolov5n.json") and not is_reference("a.onnx")
    assert resolve("yolov5n", None) == DEFAULT_MODEL.resolve()
    mine = _copy_zoo(tmp_path)
    assert resolve("mine", tmp_path) == mine and resolve("mine@1.1.0", tmp_path) == mine
    listed = {e.name: e for e in entries(tmp_path)}
    assert listed["mine"].parent == "yolov5n@1.0.0" and "yolov5n" in listed
    assert "onnx-int8-320" in listed["mine"].roles
    with pytest.raises(VigilError, match=r"is version 1\.1\.0, not 2\.0\.0"):
        resolve("mine@2.0.0", tmp_path)
    with pytest.raises(VigilError, match=r"no model named 'nope' in the registry \(have: mine"):
        resolve("nope", tmp_path)


def test_the_engine_runs_a_registry_entry_by_name(tmp_path: Path) -> None:
    mine = _copy_zoo(tmp_path)
    cfg = load_config(None, {"model.manifest": "mine@1.1.0", "model.registry": str(tmp_path)})
    resolved = resolve_model(cfg.model)
    manifest = resolved.manifest
    assert manifest is not None and (manifest.name, manifest.version) == ("mine", "1.1.0")
    assert resolved.onnx == mine.parent / "yolov5n-320-int8.onnx"
    assert resolve_model(cfg.model, "fp32").onnx == mine.parent / "yolov5n-320.onnx"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "prune", "--ratio", "0", "--images", str(SAMPLE_CLIP)], "--ratio must be in"),
        (["models", "prune", "--ratio", "0.95", "--images", "x"], "--ratio must be in"),
        (["models", "prune", "--ratio", "0.3", "--images", "/no/such"], "source not found"),
        (
            ["models", "prune", "--ratio", "0.3", "--imgsz", "300", "--images", str(SAMPLE_CLIP)],
            "--imgsz must be a multiple of 32",
        ),
        (["models", "quantize", "--calib", "/no/such/dir"], "calibration source not found"),
        (["models", "quantize", "--weights", "nope", "--calib", "x"], "no model named 'nope'"),
        (
            ["models", "quantize", "--calib", str(SAMPLE_CLIP), "--methods", "minmax", "median"],
            "unknown calibration method 'median'",
        ),
        (["models", "build-engine", "--weights", "nope"], "no model named 'nope'"),
        (["models", "report", "--models", "nope"], "no model named 'nope'"),
        (["replay", str(SAMPLE_CLIP), "--model", "nope", "--out", "/tmp/x"], "no model named"),
    ],
)
def test_toolchain_bad_input_is_one_line(args: list[str], message: str) -> None:
    r = vigil(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("vigil: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_build_engine_check_only_runs_without_a_gpu(tmp_path: Path) -> None:
    r = vigil("models", "build-engine", "--check-only", "--cache", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "fit for TensorRT" in r.stdout and "1x3x320x320 / 8x3x320x320" in r.stdout
    r = vigil("models", "build-engine", "--check-only", "--onnx", "int8", "--cache", str(tmp_path))
    assert r.returncode == 2 and "TensorRT takes only signed INT8 with zero point 0" in r.stderr


def _tiny_registry(root: Path) -> Path:
    net = tiny_yolo()
    m = tiny_manifest()
    path = save_weights(net, m, root / "tiny")
    export_onnx(net, root / "tiny" / "tiny-96.onnx", SIZE)
    m.add_file("onnx-fp32-96", root / "tiny" / "tiny-96.onnx", imgsz=SIZE)
    m.save(path)
    return path


def test_prune_writes_a_complete_registry_entry(tmp_path: Path) -> None:
    weights = _tiny_registry(tmp_path)
    s = DistillSettings(steps=3, batch=2, imgsz=SIZE, save_every=2)
    out = prune_model(weights, 0.5, random_images(4, 100, 140), tmp_path, None, s, progress=False)
    assert out == tmp_path / "tiny-p50" / "tiny-p50.json"
    m = ModelManifest.load(out)
    assert m.version == "1.1.0" and m.lineage["parent"]["name"] == "tiny"
    assert m.lineage["pruning"]["params_after"] < m.lineage["pruning"]["params_before"]
    assert (
        m.lineage["distillation"]["steps"] == 3
        and len(m.lineage["distillation"]["images_sha256"]) == 64
    )
    for entry in m.files.values():
        assert sha256_file(out.parent / entry["path"]) == entry["sha256"]
    net, _ = load_weights(out)
    with torch.no_grad():
        assert net(torch.rand(1, 3, SIZE, SIZE)).shape[-1] == 8
    assert not list(tmp_path.glob(".tiny-p50*"))  # no staging folder or checkpoint left


def test_a_failed_build_never_replaces_a_good_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = _tiny_registry(tmp_path)
    s = DistillSettings(steps=2, batch=2, imgsz=SIZE, save_every=1)
    good = prune_model(weights, 0.5, random_images(4, 100, 140), tmp_path, "p", s, progress=False)
    before = {p.name: p.read_bytes() for p in good.parent.iterdir()}

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("models.export.export_onnx", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prune_model(
            weights,
            0.5,
            random_images(4, 100, 140),
            tmp_path,
            "p",
            replace(s, seed=3),
            progress=False,
        )
    assert {p.name: p.read_bytes() for p in good.parent.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.") and p.is_dir()]
    # the interrupted run left its checkpoint: --resume continues from it
    assert (tmp_path / ".p.distill.safetensors").is_file()


def test_swap_in_replaces_a_folder_whole(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "old.txt").write_text("old")
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "new.txt").write_text("new")
    swap_in(tmp_path / "stage", tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_quantize_picks_the_calibration_with_the_best_map(tmp_path: Path) -> None:
    coco = shared("coco", "coco128")
    mine = _copy_zoo(tmp_path)
    r = vigil(
        "models",
        "quantize",
        "--weights",
        str(mine),
        "--calib",
        str(coco),
        "--calib-frames",
        "16",
        "--methods",
        "minmax",
        "percentile",
        "--data",
        str(coco),
    )
    assert r.returncode == 0, r.stderr
    m = ModelManifest.load(mine)
    trials = m.calibration["trials"]
    assert [t["method"] for t in trials] == ["minmax", "percentile"]
    best = max(trials, key=lambda t: (t["map50_95"], t["map50"]))
    assert m.calibration["method"] == best["method"] and m.calibration["images"] == 16
    assert m.files["onnx-int8-320"]["method"] == best["method"]
    assert (
        sha256_file(mine.parent / m.files["onnx-int8-320"]["path"])
        == m.files["onnx-int8-320"]["sha256"]
    )
    assert 0.2 < best["map50_95"] < 0.4
    assert f"INT8 ({best['method']} calibration)" in r.stdout


def test_report_table_plot_and_manifest_metrics(tmp_path: Path) -> None:
    coco = shared("coco", "coco128")
    mine = _copy_zoo(tmp_path / "reg")
    out = tmp_path / "report"
    r = vigil(
        "models",
        "report",
        "--models",
        str(mine),
        "--data",
        str(coco),
        "--backends",
        "onnxruntime",
        "--rounds",
        "1",
        "--reps",
        "2",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text().splitlines()
    assert md[0].startswith("| variant | mAP@.5:.95 | mAP@.5 |") and "onnxruntime b8 ms" in md[0]
    assert [line.split(" | ")[0] for line in md[2:]] == ["| mine fp32", "| mine int8"]
    rows = json.loads((out / "report.json").read_text())
    fp32, int8 = rows
    assert fp32["map50_95"] > int8["map50_95"] - 0.02 and fp32["file_mb"] > 2 * int8["file_mb"]
    assert fp32["params"] == 1_872_157  # as the YOLOv5 model summary counts
    assert (out / "accuracy_latency.png").stat().st_size > 1000
    m = ModelManifest.load(mine)
    assert m.metrics["onnx-int8-320"]["map50_95"] == int8["map50_95"]


def test_qat_adds_an_int8_qat_variant(tmp_path: Path) -> None:
    from toolchain.qat import qat_model

    weights = _tiny_registry(tmp_path)
    out = qat_model(weights, random_images(4, 100, 140), None, SIZE, 2, progress=False)
    m = ModelManifest.load(weights)
    entry = m.files["onnx-int8-qat-96"]
    assert out == weights.parent / entry["path"] and entry["qat"]["steps"] == 2
    assert entry["method"] == "minmax"  # the manifest had no PTQ choice to follow
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


def test_every_bundled_file_matches_its_manifest_sha256() -> None:
    for manifest in (DEFAULT_MODEL.parent.parent).glob("*/*.json"):
        m = ModelManifest.load(manifest)
        assert m.files, manifest
        for role, entry in m.files.items():
            assert sha256_file(manifest.parent / entry["path"]) == entry["sha256"], role


def test_models_list_shows_user_entries_and_the_zoo(tmp_path: Path) -> None:
    _copy_zoo(tmp_path)
    r = vigil("models", "list", "--registry", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows["mine"][1] == "1.1.0" and rows["mine"][2] == "yolov5n@1.0.0"
    assert rows["yolov5n"][2] == "-"
