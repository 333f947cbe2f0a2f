"""MOT evaluation: replay MOTChallenge-layout sequences and score them with TrackEval.

A sequence folder holds ``img1/`` (frames), ``gt/gt.txt`` (``frame,id,x,y,w,h,conf,...``,
1-based frames, source pixels) and optionally ``seqinfo.ini`` (``frameRate``). Scores come from
TrackEval's own metric classes (HOTA, CLEAR, Identity) and their ``combine_sequences``; this
module only arranges the per-frame ids and the IoU similarity matrices the way TrackEval's
MOTChallenge loader does (gt rows with ``conf == 0`` are ignored, as in MOT15).
"""

from __future__ import annotations

import configparser
import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.types import VigilError

REPORTED = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW", "FP", "FN", "Frag")


@dataclass(frozen=True)
class Sequence:
    name: str
    path: Path
    frames: int
    fps: float


def read_sequence(path: Path) -> Sequence:
    """Validate a MOTChallenge sequence folder; raise VigilError naming what is missing."""
    if not path.is_dir():
        raise VigilError(f"sequence folder not found: {path}")
    if not (path / "img1").is_dir():
        raise VigilError(f"{path}: no img1/ folder (not a MOTChallenge sequence)")
    if not (path / "gt" / "gt.txt").is_file():
        raise VigilError(f"{path}: no gt/gt.txt (ground truth is needed to evaluate)")
    fps, frames = 25.0, 0
    ini = path / "seqinfo.ini"
    if ini.is_file():
        parser = configparser.ConfigParser()
        parser.read(ini)
        if parser.has_section("Sequence"):
            fps = parser.getfloat("Sequence", "frameRate", fallback=fps)
            frames = parser.getint("Sequence", "seqLength", fallback=0)
    return Sequence(path.name, path, frames, fps)


def load_mot(path: Path, keep_zero_conf: bool = True) -> np.ndarray:
    """Rows ``(K, 6) float64``: frame, id, x, y, w, h. Drops conf==0 rows unless told."""
    try:
        data = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise VigilError(f"{path}: not a MOTChallenge text file ({e})") from None
    if data.size == 0:
        return np.zeros((0, 6))
    if data.shape[1] < 7:
        raise VigilError(f"{path}: expected at least 7 columns, found {data.shape[1]}")
    if not keep_zero_conf:
        data = data[data[:, 6] != 0]
    return data[:, :6]


def trackeval_data(gt: np.ndarray, tr: np.ndarray, num_frames: int, seq: str) -> dict[str, Any]:
    """The dict TrackEval's metrics take for one sequence (ids contiguous from 0)."""
    from trackeval.datasets._base_dataset import _BaseDataset

    num_frames = max(num_frames, int(gt[:, 0].max(initial=0)), int(tr[:, 0].max(initial=0)))
    gt_u, gt_ids = np.unique(gt[:, 1], return_inverse=True)
    tr_u, tr_ids = np.unique(tr[:, 1], return_inverse=True)
    gt_f, tr_f = gt[:, 0].astype(int), tr[:, 0].astype(int)
    data: dict[str, Any] = {
        "num_timesteps": num_frames,
        "num_gt_ids": len(gt_u),
        "num_tracker_ids": len(tr_u),
        "num_gt_dets": len(gt),
        "num_tracker_dets": len(tr),
        "gt_ids": [],
        "tracker_ids": [],
        "similarity_scores": [],
        "seq": seq,
    }
    for t in range(1, num_frames + 1):  # a loop over frames of the evaluation, not boxes
        g, k = gt_f == t, tr_f == t
        data["gt_ids"].append(gt_ids[g].astype(int))
        data["tracker_ids"].append(tr_ids[k].astype(int))
        data["similarity_scores"].append(
            _BaseDataset._calculate_box_ious(gt[g, 2:6], tr[k, 2:6], box_format="xywh")
        )
    return data


def replay_sequences(
    cfg: Any,
    paths: list[Path],
    out_root: Path,
    engine: Any = None,
    progress: Callable[[int | None, str], Any] | None = None,
    rules: Any = None,
    detect_every: int = 1,
    motion: Any = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Replay each sequence (``tracks.txt`` under ``out_root/<name>/``) with ``cfg`` and one
    shared engine; returns TrackEval data per sequence and each replay's summary.
    ``progress(total_frames, name)`` may return a context manager with an ``update`` method;
    ``rules`` (a StreamConfig's lines and zones) also runs the analytics (``counts.json``);
    ``detect_every`` and ``motion`` (a MotionConfig) schedule the detector as in a live stream."""
    from dataclasses import replace

    from pipeline.replay import Replay
    from pipeline.sources import FFmpegSource
    from pipeline.wiring import build_decode, build_engine

    seqs = [read_sequence(p) for p in paths]
    engine = engine or build_engine(cfg)
    per_seq, replays = {}, {}
    for seq in seqs:
        seq_cfg = replace(cfg, source=replace(cfg.source, folder_fps=seq.fps))
        source = FFmpegSource(
            str(seq.path / "img1"),
            stream_id=seq.name,
            folder_fps=seq.fps,
            decode=build_decode(cfg.source),
        )
        out = out_root / seq.name
        replay = Replay(
            source, seq_cfg, out, engine=engine, rules=rules, detect_every=detect_every,
            motion=motion,
        )  # fmt: skip
        if progress is None:
            replays[seq.name] = replay.run()
        else:
            with progress(source.info.frame_count, seq.name) as bar:
                replays[seq.name] = replay.run(bar.update)
        gt = load_mot(seq.path / "gt" / "gt.txt", keep_zero_conf=False)
        tr = load_mot(out / "tracks.txt")
        per_seq[seq.name] = trackeval_data(gt, tr, max(seq.frames, source.frames_decoded), seq.name)
    return per_seq, replays


def score_sequences(per_seq: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """TrackEval HOTA/CLEAR/Identity per sequence and COMBINED -> flat numbers per row."""
    import trackeval

    metrics = [
        trackeval.metrics.HOTA(),
        trackeval.metrics.CLEAR({"THRESHOLD": 0.5, "PRINT_CONFIG": False}),
        trackeval.metrics.Identity({"THRESHOLD": 0.5, "PRINT_CONFIG": False}),
    ]
    raw: dict[str, dict[str, Any]] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for seq, data in per_seq.items():
            raw[seq] = {m.get_name(): m.eval_sequence(data) for m in metrics}
        if len(per_seq) > 1:
            raw["COMBINED"] = {
                m.get_name(): m.combine_sequences({s: raw[s][m.get_name()] for s in per_seq})
                for m in metrics
            }
    table: dict[str, dict[str, float]] = {}
    for seq, res in raw.items():
        row = {
            "HOTA": float(np.mean(res["HOTA"]["HOTA"])),
            "DetA": float(np.mean(res["HOTA"]["DetA"])),
            "AssA": float(np.mean(res["HOTA"]["AssA"])),
            "MOTA": float(res["CLEAR"]["MOTA"]),
            "IDF1": float(res["Identity"]["IDF1"]),
            "IDSW": float(res["CLEAR"]["IDSW"]),
            "FP": float(res["CLEAR"]["CLR_FP"]),
            "FN": float(res["CLEAR"]["CLR_FN"]),
            "Frag": float(res["CLEAR"]["Frag"]),
        }
        table[seq] = row
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    width = max([len(s) for s in table] + [8])
    lines = [f"{'sequence':<{width}}  " + "  ".join(f"{k:>6}" for k in REPORTED)]
    for seq, row in table.items():
        cells = [
            f"{row[k]:6.3f}" if k in ("HOTA", "DetA", "AssA", "MOTA", "IDF1") else f"{row[k]:6.0f}"
            for k in REPORTED
        ]
        lines.append(f"{seq:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
