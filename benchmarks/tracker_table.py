"""The README's tracker x embedder table: accuracy and cost of each combination in one run.

    python -m benchmarks.tracker_table SEQ_DIR... [--combo TRACKER[+EMBEDDER[@HxW]]...]

For every combination: HOTA / IDF1 / MOTA / ID switches per sequence (detections and embeddings
cached once, :mod:`evaluation.cache`, so the scores equal ``vigil eval`` with the same
``--tracker``/``--embedder``), the tracker's median ms per frame, and the embedder's median ms
per frame (one sequence's strong boxes, batches of 8 frames as a replay embeds them, every
embedder interleaved batch by batch so load from other processes falls on all alike; wall and
CPU time). Embedders are named as in ``tracker.embedder`` (``mobilenet``, ``histogram`` or an
imported re-id model), optionally at another crop size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

DEFAULT_COMBOS = [
    "deepsort+mobilenet",
    "deepsort+mobilenet@256x128",
    "deepsort+histogram",
    "bytetrack",
    "deepsort-reference+mobilenet",
]


def _parse(combo: str) -> tuple[str, str | None, str]:
    tracker, _, emb = combo.partition("+")
    name, _, size = emb.partition("@")
    return tracker, name or None, size


def embed_costs(cfg: Any, seq: Any, seq_dir: Path, specs: list[tuple[str, str]]) -> dict[str, Any]:
    """Median (wall, CPU) ms per frame of each ``(embedder, size)`` on ``seq``'s strong boxes."""
    from pipeline.types import VigilError
    from pipeline.wiring import build_named_embedder

    strong = float(cfg.tracker.deepsort.high_confidence)
    frames = sorted((seq_dir / "img1").iterdir())
    images: list[np.ndarray] = []
    for p in frames[: seq.frames]:
        img = cv2.imread(str(p))
        if img is None:
            raise VigilError(f"{p}: not a readable image")
        images.append(img)
    boxes = [seq.frame(i, strong, None)[0].xyxy for i in range(len(images))]
    embedders = {
        (n, s): build_named_embedder(replace(cfg, tracker=replace(cfg.tracker, embedder_size=s)), n)
        for n, s in specs
    }
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in embedders}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in embedders}
    for b in range(0, len(images) - 7, 8):
        for key, emb in embedders.items():
            t, c = time.perf_counter(), time.process_time()
            emb.embed(images[b : b + 8], boxes[b : b + 8])
            wall[key].append((time.perf_counter() - t) * 1e3 / 8)
            cpu[key].append((time.process_time() - c) * 1e3 / 8)
    return {
        f"{n}@{s}" if s else n: (statistics.median(wall[(n, s)]), statistics.median(cpu[(n, s)]))
        for n, s in embedders
    }


def main(argv: list[str] | None = None) -> int:
    from evaluation.cache import cache_sequences, run_tracker, score_runs
    from pipeline.config import load_config
    from trackers.registry import create_tracker

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sequences", nargs="+", type=Path)
    ap.add_argument("--combo", nargs="*", default=DEFAULT_COMBOS)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--cache", type=Path, default=Path("runs/tracker-table-cache"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    combos = [_parse(c) for c in args.combo]
    specs: list[tuple[str, str]] = list(dict.fromkeys((e, s) for _, e, s in combos if e))
    lines = ["| tracker + embedder | " + " | ".join(p.name for p in args.sequences)
             + " | tracker ms | embedder ms/frame (wall / CPU) |",
             "|---|" + "---|" * (len(args.sequences) + 2)]  # fmt: skip
    cached: dict[tuple[str, str], list[Any]] = {}
    for name, crop in specs or [("histogram", "")]:
        c = replace(cfg, tracker=replace(cfg.tracker, embedder_size=crop))
        cached[(name, crop)] = cache_sequences(c, args.sequences, args.cache, 0.05, [name])
    any_seqs = next(iter(cached.values()))
    costs = embed_costs(cfg, any_seqs[0], args.sequences[0], specs) if specs else {}
    for tracker, emb, size in combos:
        seqs = cached[(emb, size)] if emb else any_seqs
        params = cfg.tracker.params(tracker)
        rows, ms = [], []
        for s in seqs:
            r, t = run_tracker(s, create_tracker(tracker, params), cfg.model.conf_threshold, emb)
            rows.append(r)
            ms.append(float(np.median(t)))
        table = score_runs(seqs, rows)
        cells = [
            "{HOTA:.3f} / {IDF1:.3f} / {MOTA:.3f} / {IDSW:.0f}".format(**table[s.name])
            for s in seqs
        ]
        key = f"{emb}@{size}" if size else (emb or "")
        wall, cpu = costs.get(key, (0.0, 0.0))
        label = f"{tracker} + {key}" if emb else tracker
        cost = f"{wall:.2f} / {cpu:.2f}" if emb else "0"
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {' / '.join(f'{m:.2f}' for m in ms)} | "
            f"{cost} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
