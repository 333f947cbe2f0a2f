"""``vigil models report``: every model variant's accuracy, size and CPU latency in one table.

A variant is one ONNX artefact of a registry entry at the report's input size (``fp32`` and
``int8``, and ``int8-qat`` when built). Per variant:

- mAP@.5:.95 and mAP@.5 on the ``eval`` split of a COCO-layout set (pycocotools; the ``tune``
  split is what calibration and distillation may use);
- IDF1 and MOTA per MOT sequence, through ``Replay`` with the default tracker;
- parameters (of the unfused network), ONNX file size;
- median latency of one detector call at batch 1 and 8 for each CPU backend, measured
  interleaved (round-robin over variants, several rounds) so machine noise hits all alike.

The metrics are also written into each manifest's ``metrics`` (atomically).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import ModelManifest
from pipeline.config import VigilConfig
from pipeline.types import VigilError

PRECISIONS = ("fp32", "int8", "int8-qat")


@dataclass
class Variant:
    manifest_path: Path
    name: str
    version: str
    precision: str
    onnx: Path
    onnx_size: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return f"onnx-{self.precision}-{self.onnx_size}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"


def collect_variants(manifests: list[Path], imgsz: int) -> list[Variant]:
    out = []
    for path in manifests:
        m = ModelManifest.load(path)
        for prec in PRECISIONS:
            role = f"onnx-{prec}-{imgsz}"
            if role in m.files:
                out.append(Variant(path, m.name, m.version, prec, m.file_path(path, role), imgsz))
    if not out:
        raise VigilError(f"no ONNX variants at --imgsz {imgsz} in the given models")
    return out


def _params(manifest_path: Path, cache: dict[Path, int]) -> int:
    """Parameters of the manifest's (unfused) network; loaded once per manifest."""
    from models.export import load_weights
    from toolchain.prune import count_params

    if manifest_path not in cache:
        cache[manifest_path] = count_params(load_weights(manifest_path)[0])
    return cache[manifest_path]


def measure_latency(
    variants: list[Variant], images: list[np.ndarray], backends: list[str], rounds: int, reps: int
) -> None:
    """Median ms per call at b1 and b8 into ``v.metrics['latency']``, interleaved."""
    from models.detector import create_detector
    from toolchain.images import letterbox_batches

    batch8 = next(letterbox_batches(images[:8], variants[0].onnx_size))
    inputs = {1: np.ascontiguousarray(batch8[:1]), 8: np.ascontiguousarray(batch8[:8])}
    for backend in backends:
        dets = [create_detector(v.onnx, backend) for v in variants]
        times: dict[tuple[int, int], list[float]] = {}
        for _ in range(rounds):
            for i, det in enumerate(dets):
                for b, x in inputs.items():
                    det.infer(x)  # warm-up (and refills caches after the other variants ran)
                    for _ in range(reps):
                        t = time.perf_counter()
                        det.infer(x)
                        times.setdefault((i, b), []).append((time.perf_counter() - t) * 1e3)
        for i, v in enumerate(variants):
            lat = v.metrics.setdefault("latency_ms", {})
            for b in inputs:
                lat[f"{dets[i].backend} b{b}"] = round(statistics.median(times[(i, b)]), 2)


def measure_accuracy(
    variants: list[Variant], cfg: VigilConfig, data: Path | None, sequences: list[Path]
) -> None:
    from evaluation.detection import evaluate_map
    from evaluation.mot import replay_sequences, score_sequences
    from models.detector import create_detector

    params: dict[Path, int] = {}
    for v in variants:
        t0 = time.perf_counter()
        if data is not None:
            r = evaluate_map(create_detector(v.onnx, "onnxruntime"), data, split="eval")
            v.metrics["map50_95"] = round(r.map50_95, 4)
            v.metrics["map50"] = round(r.map50, 4)
            v.metrics["map_images"] = r.images
        if sequences:
            model = replace(cfg.model, manifest=str(v.manifest_path), precision=v.precision)
            vcfg = replace(cfg, model=model)
            with tempfile.TemporaryDirectory(prefix="vigil-report-") as tmp:
                per_seq, _ = replay_sequences(vcfg, sequences, Path(tmp))
            table = score_sequences(per_seq)
            v.metrics["tracking"] = {
                s: {"IDF1": round(row["IDF1"], 3), "MOTA": round(row["MOTA"], 3)}
                for s, row in table.items()
                if s != "COMBINED"
            }
        v.metrics["params"] = _params(v.manifest_path, params)
        v.metrics["file_mb"] = round(v.onnx.stat().st_size / 1e6, 2)
        print(f"measured {v.label} in {time.perf_counter() - t0:.0f} s", flush=True)


def record(variants: list[Variant]) -> None:
    """Write each variant's metrics into its manifest (``metrics[role]``)."""
    for v in variants:
        m = ModelManifest.load(v.manifest_path)
        m.metrics[v.role] = v.metrics
        m.save(v.manifest_path)


def table_rows(variants: list[Variant]) -> tuple[list[str], list[list[str]]]:
    seqs = sorted({s for v in variants for s in v.metrics.get("tracking", {})})
    lat_keys = sorted({k for v in variants for k in v.metrics.get("latency_ms", {})})
    header = ["variant", "mAP@.5:.95", "mAP@.5"]
    header += [f"{s} {k}" for s in seqs for k in ("IDF1", "MOTA")]
    header += ["params", "ONNX MB"] + [f"{k} ms" for k in lat_keys]
    rows = []
    for v in variants:
        m = v.metrics
        row = [
            v.label,
            f"{m.get('map50_95', float('nan')):.4f}",
            f"{m.get('map50', float('nan')):.4f}",
        ]
        row += [f"{m['tracking'][s][k]:.3f}" for s in seqs for k in ("IDF1", "MOTA")]
        row += [f"{m['params']:,}", f"{m['file_mb']:.2f}"]
        row += [f"{m['latency_ms'].get(k, float('nan')):.2f}" for k in lat_keys]
        rows.append(row)
    return header, rows


def markdown(variants: list[Variant]) -> str:
    header, rows = table_rows(variants)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def terminal(variants: list[Variant]) -> str:
    header, rows = table_rows(variants)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [header, *rows]) + "\n"


def plot(variants: list[Variant], out: Path, latency_key: str) -> None:
    """mAP@.5:.95 against ``latency_key`` latency (ms per image), one labelled point each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = int(latency_key.rsplit("b", 1)[1])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, v in enumerate(variants):
        x = v.metrics["latency_ms"][latency_key] / batch
        y = v.metrics.get("map50_95", float("nan"))
        ax.plot(x, y, "os^Dv<>p*h"[i % 10], markersize=8, label=v.label)
    ax.legend(fontsize=8, loc="center right")
    ax.set(
        xlabel=f"ms per image ({latency_key})",
        ylabel="mAP@.5:.95 (coco eval split)",
        title="Accuracy against CPU latency",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
