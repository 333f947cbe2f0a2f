"""REST request models built from the config dataclasses, so a knob is defined once.

:func:`rest_model` turns a config dataclass (``pipeline.config.StreamConfig``,
``analytics.rules.LineRule``...) into a pydantic model for FastAPI: the same fields, defaults,
bounds (``range`` -> ``ge``/``le``), allowed values (``choices`` -> a ``Literal``), name patterns,
lists of names, point lists (``points``: how many ``[x, y]`` pairs, each in 0..1), lists of
nested entries (``items``) and nested sections, required fields, and unknown keys refused.
Fields marked ``rest: False`` (a server-side file path) are not REST inputs. The OpenAPI
description therefore states the same limits the config loader enforces; the loader's own
check (``parse_stream``, ``parse_section``) still runs on every body, so there is one source of
truth.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, create_model
from pydantic import Field as PydanticField

from pipeline.config import field_default

_TYPES: dict[str, type] = {"str": str, "float": float, "int": int, "bool": bool}
_Coordinate = Annotated[float, PydanticField(ge=0.0, le=1.0)]


def _annotation(f: Field[Any], name: str) -> tuple[Any, dict[str, Any]] | None:
    """The pydantic annotation and constraints of one dataclass field (None: not a REST input)."""
    meta = f.metadata
    if meta.get("rest") is False:
        return None
    constraints: dict[str, Any] = {}
    if "items" in meta:
        if "max_items" in meta:
            constraints["max_length"] = meta["max_items"]
        return list[rest_model(meta["items"], f"{name}{meta['items'].__name__}")], constraints  # type: ignore[misc]
    if "points" in meta:
        constraints["min_length"], constraints["max_length"] = meta["points"]
        return list[tuple[_Coordinate, _Coordinate]], constraints
    if f.default_factory is not MISSING and is_dataclass(default := field_default(f)):
        return rest_model(type(default), f"{name}{type(default).__name__}"), constraints
    if str(f.type).startswith("tuple[str"):
        return list[str], constraints
    kind = _TYPES.get(str(f.type))
    if kind is None:
        return None
    if "range" in meta:
        constraints["ge"], constraints["le"] = meta["range"]
    if "pattern" in meta:
        constraints["pattern"] = meta["pattern"]
    if "max_length" in meta:
        constraints["max_length"] = meta["max_length"]
    if meta.get("required"):
        constraints["min_length"] = 1
    annotation: Any = kind
    if "choices" in meta:
        annotation = Literal[tuple(meta["choices"])]
    return annotation, constraints


def rest_model(cls: type, name: str) -> type[BaseModel]:
    """A pydantic model with ``cls``'s fields (see the module docstring)."""
    spec: dict[str, Any] = {}
    for f in fields(cls):
        found = _annotation(f, name)
        if found is None:
            continue
        annotation, constraints = found
        if f.metadata.get("required"):
            spec[f.name] = (annotation, PydanticField(..., **constraints))
        else:
            default = field_default(f)
            default = list(default) if isinstance(default, tuple) else default
            if is_dataclass(default):
                spec[f.name] = (
                    annotation,
                    PydanticField(default_factory=annotation, **constraints),
                )
            else:
                spec[f.name] = (annotation, PydanticField(default, **constraints))
    model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="forbid"), **spec)
    return model


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    """``/readyz``: 200 when ready, 503 (same body, with ``reason``) otherwise."""

    ready: bool
    model: dict[str, str]
    reason: str | None = None


class StreamStatus(BaseModel):
    """One stream as ``GET /api/streams`` shows it. ``url`` never holds credentials (userinfo
    and, unless ``server.redact_query`` is off, every query value are ``***``)."""

    id: str
    url: str
    # unassigned / starting: a gateway's camera that no worker runs yet / whose worker has
    # claimed it and not yet reported it
    state: Literal[
        "connecting", "live", "stalled", "reconnecting", "stopped", "failed", "unassigned",
        "starting",
    ]  # fmt: skip
    last_error: str | None
    last_error_at: float | None
    width: int
    height: int
    target_fps: float
    decode_fps: float
    infer_fps: float
    frames_decoded: int
    frames_inferred: int
    drops: int
    skipped: int
    reconnects: int
    decode_errors: int
    errors: int
    queue_depth: int
    owner: str | None = None  # a gateway's camera: the worker that holds its lease
    token: int | None = None  # and that lease's fencing token
    effective_fps: float | None = None  # the rate admitted now (below target_fps under QoS)
    priority: int = 0
    detect_every: int = 1
    motion: bool = False
    frames_detected: int | None = None  # through the detector
    frames_predicted: int | None = None  # skipped by detect_every: the tracker predicted
    frames_idle: int | None = None  # skipped by motion gating
