"""``vigil tune``: search a tracker's parameters on MOTChallenge sequences with Optuna's TPE.

Each trial re-runs only the tracker on detections and embeddings cached once per sequence
(:mod:`evaluation.cache`), so a trial costs what tracking costs. The search space is every knob
of the tracker's parameter dataclass whose field metadata has a ``tune`` range (``--params``
narrows it), plus the detection confidence threshold (``model.conf_threshold``). Trial 0 is
always the configuration as given, so the study shows the gain over it. The objective (HOTA,
IDF1 or MOTA) is TrackEval's combined score over the sequences.

Leave-one-sequence-out cross-validation: with k >= 2 sequences, k more searches (same budget)
each see all sequences but one, and their best parameters are scored on the one left out,
next to the defaults' score there. The mean held-out gain is what to expect on new footage;
the in-sample gain is an upper bound. Every study lives in one SQLite file, so an interrupted
run resumes where it stopped (finished trials are kept; a study name encodes the tracker,
embedder, objective, sequences and search space, so a changed question starts a new study).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from evaluation.cache import CachedSequence, cache_sequences, run_tracker, score_runs
from pipeline.config import VigilConfig
from pipeline.types import VigilError
from trackers.registry import create_tracker, spec

OBJECTIVES = {"hota": "HOTA", "idf1": "IDF1", "mota": "MOTA"}
CONF = "conf_threshold"  # the detection confidence threshold (model.conf_threshold)
CONF_RANGE = (0.05, 0.6)  # and the floor the detections are cached at


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # "int", "float" or "bool"
    low: float
    high: float


def search_space(tracker: str, only: Sequence[str] = ()) -> list[Knob]:
    """The tunable knobs of ``tracker`` (metadata ``tune``) and the confidence threshold,
    restricted to ``only`` when given (an unknown name is a one-line error)."""
    knobs = [Knob(CONF, "float", *CONF_RANGE)]
    for f in fields(spec(tracker).params):
        rng = f.metadata.get("tune")
        if rng is None:
            continue
        kind = "bool" if isinstance(rng[0], bool) else "int" if isinstance(rng[0], int) else "float"
        knobs.append(Knob(f.name, kind, float(rng[0]), float(rng[1])))
    if only:
        known = {k.name for k in knobs}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise VigilError(
                f"unknown parameter {unknown[0]!r} for tracker {tracker} "
                f"(tunable: {', '.join(sorted(known))})"
            )
        knobs = [k for k in knobs if k.name in only]
    return knobs


def _suggest(trial: Any, knobs: Sequence[Knob]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in knobs:
        if k.kind == "bool":
            out[k.name] = trial.suggest_categorical(k.name, [False, True])
        elif k.kind == "int":
            out[k.name] = trial.suggest_int(k.name, int(k.low), int(k.high))
        else:
            out[k.name] = trial.suggest_float(k.name, k.low, k.high)
    return out


def _defaults(cfg: VigilConfig, tracker: str, knobs: Sequence[Knob]) -> dict[str, Any]:
    params = cfg.tracker.params(tracker)
    out = {}
    for k in knobs:
        value = cfg.model.conf_threshold if k.name == CONF else getattr(params, k.name)
        if k.kind != "bool":  # a default outside the search range is clipped into it
            value = type(value)(min(max(value, k.low), k.high))
        out[k.name] = value
    return out


def evaluate(
    cfg: VigilConfig,
    tracker: str,
    embedder: str | None,
    seqs: Sequence[CachedSequence],
    values: dict[str, Any],
    detect_every: int = 1,
) -> dict[str, dict[str, float]]:
    """TrackEval scores of ``tracker`` with ``values`` over cached ``seqs`` (the detector on
    every ``detect_every``-th frame, the tracker predicting the others)."""
    base = cfg.tracker.params(tracker)
    params = replace(base, **{k: v for k, v in values.items() if k != CONF})
    conf = float(values.get(CONF, cfg.model.conf_threshold))
    rows = [
        run_tracker(s, create_tracker(tracker, params), conf, embedder, detect_every)[0]
        for s in seqs
    ]
    return score_runs(seqs, rows)


def _score(table: dict[str, dict[str, float]], metric: str) -> float:
    row = table.get("COMBINED") or next(iter(table.values()))
    return float(row[metric])


@dataclass
class StudyResult:
    name: str
    best_value: float
    default_value: float
    best: dict[str, Any]
    trials: int


def run_study(
    storage: str,
    name: str,
    cfg: VigilConfig,
    tracker: str,
    embedder: str | None,
    seqs: Sequence[CachedSequence],
    knobs: Sequence[Knob],
    metric: str,
    trials: int,
    seed: int,
    bar: Callable[[int], Any] | None = None,
    detect_every: int = 1,
) -> StudyResult:
    """One TPE study (resumed if ``name`` exists in ``storage``) up to ``trials`` finished
    trials; trial 0 is the defaults."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=sampler,
        load_if_exists=True,
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    defaults = _defaults(cfg, tracker, knobs)
    if not study.trials:
        study.enqueue_trial(defaults)

    def objective(trial: optuna.Trial) -> float:
        values = _suggest(trial, knobs)
        table = evaluate(cfg, tracker, embedder, seqs, values, detect_every)
        trial.set_user_attr("scores", {s: row[metric] for s, row in table.items()})
        return _score(table, metric)

    if bar is not None and done:
        bar(len(done))
    remaining = max(trials - len(done), 0)
    callbacks = [lambda _s, _t: bar(1)] if bar is not None else []
    if remaining:
        study.optimize(objective, n_trials=remaining, callbacks=callbacks)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    first = min(complete, key=lambda t: t.number)
    return StudyResult(
        name=name,
        best_value=float(study.best_value),
        default_value=float(first.value or 0.0),
        best=dict(study.best_params),
        trials=len(complete),
    )


def _study_name(prefix: str, seqs: Sequence[CachedSequence], knobs: Sequence[Knob]) -> str:
    ident = json.dumps([[s.name for s in seqs], [k.__dict__ for k in knobs]], sort_keys=True)
    return f"{prefix}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def config_block(tracker: str, values: dict[str, Any]) -> str:
    """The best parameters as a YAML block to paste into a config file."""
    section = spec(tracker).section
    knobs = {k: v for k, v in values.items() if k != CONF}
    doc: dict[str, Any] = {"tracker": {"name": tracker, section: knobs}}
    if CONF in values:
        doc["model"] = {"conf_threshold": round(float(values[CONF]), 4)}
    for k, v in knobs.items():
        if isinstance(v, float):
            knobs[k] = round(v, 4)
    return yaml.safe_dump(doc, sort_keys=False)


def tune(
    cfg: VigilConfig,
    paths: Sequence[Path],
    out: Path,
    tracker: str,
    objective: str,
    trials: int,
    only: Sequence[str] = (),
    cv: bool = True,
    seed: int = 0,
    progress: Callable[..., Any] | None = None,
    detect_every: int = 1,
) -> dict[str, Any]:
    """The whole ``vigil tune`` run; returns what it prints (also ``out/tune.json``). With
    ``detect_every`` k > 1 every trial runs the detector on every k-th frame only (the tracker
    predicts the others, as a stream with ``detect_every: k`` does): parameters for such streams.
    ``progress(total, name, unit)`` may return a context manager with an ``update`` method."""
    if not paths:
        raise VigilError("tune needs at least one MOTChallenge sequence folder")
    if objective not in OBJECTIVES:
        raise VigilError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not 1 <= detect_every <= 30:
        raise VigilError(f"--detect-every must be in [1, 30], got {detect_every}")
    metric = OBJECTIVES[objective]
    knobs = search_space(tracker, only)
    uses_appearance = bool(create_tracker(tracker, cfg.tracker.params(tracker)).uses_appearance)
    embedder = cfg.tracker.embedder if uses_appearance else None
    out.mkdir(parents=True, exist_ok=True)
    floor = min(CONF_RANGE[0], cfg.model.conf_threshold)
    seqs = cache_sequences(
        cfg, paths, out / "cache", floor, [embedder] if embedder else [], progress
    )
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    prefix = f"{tracker}-{embedder or 'none'}-{objective}"
    if detect_every > 1:  # its own studies: scores at another cadence are not comparable
        prefix += f"-every{detect_every}"
    folds = [[s for s in seqs if s is not held] for held in seqs] if cv and len(seqs) > 1 else []
    total = trials * (1 + len(folds))

    def studies(bar: Callable[[int], Any] | None) -> tuple[StudyResult, list[dict[str, Any]]]:
        main = run_study(
            storage, _study_name(prefix, seqs, knobs), cfg, tracker, embedder, seqs, knobs,
            metric, trials, seed, bar, detect_every,
        )  # fmt: skip
        held_out = []
        for train, held in zip(folds, seqs, strict=False):
            fold = run_study(
                storage, _study_name(f"{prefix}-without-{held.name}", train, knobs), cfg,
                tracker, embedder, train, knobs, metric, trials, seed, bar, detect_every,
            )  # fmt: skip
            defaults = _defaults(cfg, tracker, knobs)
            on_held = _score(
                evaluate(cfg, tracker, embedder, [held], fold.best, detect_every), metric
            )
            at_default = _score(
                evaluate(cfg, tracker, embedder, [held], defaults, detect_every), metric
            )
            held_out.append(
                {"held_out": held.name, "tuned": on_held, "default": at_default,
                 "best": fold.best, "trials": fold.trials}
            )  # fmt: skip
        return main, held_out

    if progress is None:
        main, held_out = studies(None)
    else:
        with progress(total, f"tune {tracker}", "trial") as bar:
            main, held_out = studies(bar.update)
    block = config_block(tracker, main.best)
    result = {
        "tracker": tracker,
        "embedder": embedder,
        "objective": metric,
        "detect_every": detect_every,
        "sequences": [s.name for s in seqs],
        "trials": main.trials,
        "default": main.default_value,
        "best": main.best_value,
        "best_params": main.best,
        "cross_validation": held_out,
        "config": block,
    }
    (out / "tune.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "best.yaml").write_text(block)
    return result


def format_result(r: dict[str, Any]) -> str:
    m = r["objective"]
    lines = [
        f"{r['tracker']} ({r['embedder'] or 'no embedder'}"
        f"{', detect_every ' + str(r['detect_every']) if r.get('detect_every', 1) > 1 else ''}"
        f"), {m} over "
        f"{', '.join(r['sequences'])}: default {r['default']:.3f} -> best {r['best']:.3f} "
        f"in-sample ({r['trials']} trials)"
    ]
    cv = r["cross_validation"]
    for row in cv:
        lines.append(
            f"  held out {row['held_out']}: default {row['default']:.3f} -> tuned on the "
            f"others {row['tuned']:.3f} ({row['tuned'] - row['default']:+.3f})"
        )
    if cv:
        gain = sum(row["tuned"] - row["default"] for row in cv) / len(cv)
        lines.append(
            f"  leave-one-sequence-out mean gain {gain:+.3f} "
            f"(in-sample {r['best'] - r['default']:+.3f})"
        )
    elif len(r["sequences"]) < 2:
        lines.append("  (cross-validation needs at least two sequences)")
    lines += ["best parameters, as a config block:", "", r["config"].rstrip()]
    return "\n".join(lines)
