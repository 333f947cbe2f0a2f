"""REST request models built from the config dataclasses, so a knob is defined once.

:func:`rest_model` turns a config dataclass (``pipeline.config.StreamConfig``...) into a pydantic
model for FastAPI: the same fields, defaults, bounds (``range`` -> ``ge``/``le``), allowed values
(``choices`` -> a ``Literal``), name patterns and required fields, and unknown keys refused. The
OpenAPI description therefore states the same limits the config loader enforces; the loader's
own check (``parse_stream``) still runs on every body, so there is one source of truth.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

_TYPES: dict[str, type] = {"str": str, "float": float, "int": int, "bool": bool}


def rest_model(cls: type, name: str) -> type[BaseModel]:
    """A pydantic model with ``cls``'s scalar fields (nested sections are not REST inputs)."""
    spec: dict[str, Any] = {}
    for f in fields(cls):
        kind = _TYPES.get(str(f.type))
        if kind is None:
            continue
        meta = f.metadata
        constraints: dict[str, Any] = {}
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
        if meta.get("required") or f.default is MISSING:
            spec[f.name] = (annotation, Field(..., **constraints))
        else:
            spec[f.name] = (annotation, Field(f.default, **constraints))
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
    state: Literal["connecting", "live", "stalled", "reconnecting", "stopped", "failed"]
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
