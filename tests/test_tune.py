"""``vigil tune``: the search space, the config block, a real resumable study with
leave-one-sequence-out cross-validation on the dev sequences, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from evaluation.tune import CONF, config_block, search_space
from pipeline.config import load_config
from pipeline.types import VigilError
from tests.factories import REPO, shared

Run = tuple[Path, subprocess.CompletedProcess[str]]


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=REPO,
        timeout=900,
    )  # fmt: skip


def test_search_space_comes_from_the_tracker_dataclass() -> None:
    knobs = {k.name: k for k in search_space("deepsort")}
    assert {CONF, "max_age", "max_cosine_distance", "nn_budget", "report_tentative"} <= set(knobs)
    assert "min_confidence" not in knobs  # no tune range: fixed
    assert knobs["max_age"].kind == "int" and knobs["report_tentative"].kind == "bool"
    assert [k.name for k in search_space("bytetrack", ["max_lost"])] == ["max_lost"]
    with pytest.raises(VigilError, match="unknown parameter 'max_age' for tracker bytetrack"):
        search_space("bytetrack", ["max_age"])


def test_config_block_loads_as_a_config(tmp_path: Path) -> None:
    block = config_block("bytetrack", {CONF: 0.123456, "max_lost": 12, "fuse_score": False})
    path = tmp_path / "best.yaml"
    path.write_text(block)
    cfg = load_config(path)
    assert cfg.tracker.name == "bytetrack" and cfg.model.conf_threshold == 0.1235
    assert cfg.tracker.bytetrack.max_lost == 12 and cfg.tracker.bytetrack.fuse_score is False


@pytest.fixture(scope="module")
def study(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    seqs = [str(shared("mot", "TUD-Stadtmitte")), str(shared("mot", "PETS09-S3MF1"))]
    out = tmp_path_factory.mktemp("tune")
    args = ["tune", *seqs, "--out", str(out), "--tracker", "bytetrack", "--quiet"]
    r = vigil(*args, "--trials", "3", "--objective", "idf1")
    return out, r


def test_tune_runs_trial_zero_as_defaults_and_cross_validates(
    study: Run,
) -> None:
    out, r = study
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "tune.json").read_text())
    assert result["sequences"] == ["TUD-Stadtmitte", "PETS09-S3MF1"] and result["trials"] == 3
    assert result["best"] >= result["default"] > 0.5
    folds = result["cross_validation"]
    assert [f["held_out"] for f in folds] == ["TUD-Stadtmitte", "PETS09-S3MF1"]
    assert all(0 < f["tuned"] <= 1 and 0 < f["default"] <= 1 for f in folds)
    assert "leave-one-sequence-out mean gain" in r.stdout and "in-sample" in r.stdout
    best = load_config(out / "best.yaml")
    assert best.tracker.name == "bytetrack"
    printed = r.stdout.split("config block:", 1)[1].split("\nstudy: ", 1)[0]
    assert yaml.safe_load(printed) == yaml.safe_load((out / "best.yaml").read_text())
    storage = f"sqlite:///{out / 'study.db'}"
    studies = optuna.get_all_study_summaries(storage)
    assert len(studies) == 3  # the main study and one per held-out sequence
    main = next(s for s in studies if "without" not in s.study_name)
    first = optuna.load_study(study_name=main.study_name, storage=storage).trials[0]
    defaults = load_config(None).tracker.bytetrack
    assert first.params["max_lost"] == defaults.max_lost
    assert first.params[CONF] == pytest.approx(load_config(None).model.conf_threshold)


def test_tune_resumes_the_study(study: Run) -> None:
    out, first = study
    assert first.returncode == 0, first.stderr
    seqs = [str(shared("mot", "TUD-Stadtmitte")), str(shared("mot", "PETS09-S3MF1"))]
    args = ["tune", *seqs, "--out", str(out), "--tracker", "bytetrack", "--quiet"]
    r = vigil(*args, "--trials", "4", "--objective", "idf1", "--no-cv")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "tune.json").read_text())["trials"] == 4  # 3 kept + 1 new


@pytest.mark.parametrize(
    ("with_sequence", "args", "message"),
    [
        (False, [], "tune needs at least one MOTChallenge sequence folder"),
        (False, ["pyproject.toml"], "sequence folder not found"),
        (True, ["--params", "nosuch"], "unknown parameter 'nosuch' for tracker deepsort"),
        (True, ["--objective", "speed"], "objective must be one of"),
        (True, ["--trials", "0"], "--trials must be at least 1"),
        (True, ["--detect-every", "0"], "--detect-every must be in [1, 30], got 0"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, with_sequence: bool, args: list[str], message: str
) -> None:
    if with_sequence:
        args = [str(shared("mot", "PETS09-S3MF1")), *args]
    r = vigil("tune", *args, "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("vigil: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_a_sequence_without_ground_truth(tmp_path: Path) -> None:
    seq = tmp_path / "seq"
    (seq / "img1").mkdir(parents=True)
    r = vigil("tune", str(seq), "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 2 and "no gt/gt.txt" in r.stderr, r.stderr
