"""The `vigil` command end to end, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.factories import REPO, SAMPLE_CLIP, Exploit, shared

VIGIL = [sys.executable, "-m", "cli.main"]


def vigil(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VIGIL, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_replay_real_clip(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = vigil("replay", str(SAMPLE_CLIP), "--out", str(out), "--max-frames", "150", "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_decoded"] == summary["frames_processed"] == 150
    assert set(summary["stages_ms"]) >= {
        "decode",
        "preprocess",
        "infer",
        "embed",
        "track",
        "encode",
    }
    assert summary["model"]["name"] == "yolov5n" and summary["model"]["precision"] == "int8"
    assert summary["fps"] > 0 and summary["width"] == 768

    rows = np.loadtxt(out / "tracks.txt", delimiter=",", ndmin=2)
    assert rows.shape[1] == 10 and len(rows) > 50
    assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= 150  # 1-based source frames
    assert (rows[:, 4] > 0).all() and (rows[:, 5] > 0).all()
    assert (rows[:, 2] >= 0).all() and (rows[:, 2] + rows[:, 4] <= 768 + 1e-3).all()

    messages = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    assert [m["frame"] for m in messages] == list(range(150))  # every frame, in order
    assert [m["seq"] for m in messages] == list(range(150))
    n_tracks = sum(len(m["tracks"]) for m in messages)
    assert n_tracks == len(rows)  # the file and the messages agree


def test_replay_all_classes_and_fp32(tmp_path: Path) -> None:
    r = vigil("replay", str(SAMPLE_CLIP), "--out", str(tmp_path), "--max-frames", "16",
              "--classes", "all", "--precision", "fp32", "--embedder", "histogram",
              "--backend", "openvino", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"]["precision"] == "fp32" and summary["model"]["backend"] == "openvino"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "/no/such/video.mp4"], "source not found"),
        (["replay", "pyproject.toml"], "is not a readable video"),
        (["replay", str(SAMPLE_CLIP), "--backend", "tpu"], "model.backend: 'tpu' is not one of"),
        (["replay", str(SAMPLE_CLIP), "--model", "pyproject.toml"], "must be a manifest"),
        (
            ["replay", str(SAMPLE_CLIP), "--model", "configs/default.yaml.onnx"],
            "model file not found",
        ),
        (["replay", str(SAMPLE_CLIP), "--classes", "unicorn"], "unknown class 'unicorn'"),
        (["eval", "/no/such/seq"], "sequence folder not found"),
        (["replay", str(SAMPLE_CLIP), "--tracker", "sort"], "tracker.name: 'sort' is not one of"),
        (["replay", str(SAMPLE_CLIP), "--embedder", "nosuch"], "unknown embedder 'nosuch'"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, args: list[str], message: str) -> None:
    r = vigil(*args, "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2
    assert r.stderr.startswith("vigil: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_wrong_model_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage that is not a model")
    r = vigil("replay", str(SAMPLE_CLIP), "--model", str(fake), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("vigil: ") and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = vigil("replay", str(empty), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no image files" in r.stderr


def test_models_convert_refuses_a_malicious_checkpoint(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Exploit(marker)}, evil)
    r = vigil("models", "convert", str(evil), "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "refused to load" in r.stderr and not marker.exists()


def test_replay_frame_folder_covers_every_frame(tmp_path: Path) -> None:
    seq = shared("mot", "PETS09-S3MF1")
    r = vigil("replay", str(seq / "img1"), "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames_processed"] == 107 and summary["source_kind"] == "folder"
    lines = (tmp_path / "messages.jsonl").read_text().splitlines()
    assert len(lines) == 107


def test_import_reid_bad_file_is_one_line(tmp_path: Path) -> None:
    r = vigil("models", "import-reid", "pyproject.toml", "--registry", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("vigil: "), r.stderr
    assert "not a loadable ONNX model" in r.stderr and r.stderr.count("\n") == 1
    r = vigil("models", "import-reid", "README.md", "--mean", "1,2", "--registry", str(tmp_path))
    assert r.returncode == 2 and "--mean needs three numbers" in r.stderr, r.stderr
