"""The model registry: built models by name, each a folder ``<root>/<name>/<name>.json``.

Two roots are searched, in order: the user's registry (``model.registry`` in the config, where
``vigil models prune|quantize`` write by default) and the zoo bundled with Vigil
(``models/zoo``, read-only). A reference is a name (``yolov5n-p30``), optionally pinned to a
version (``yolov5n-p30@1.1.0``); anything else (a path separator, a file suffix) is a file path and
bypasses the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from models.manifest import ModelManifest
from pipeline.types import VigilError

ZOO = Path(__file__).resolve().parent / "zoo"


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    manifest: Path
    roles: tuple[str, ...]
    parent: str  # "name@version" it was derived from, or ""


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(@\d+\.\d+\.\d+)?$")


def is_reference(spec: str) -> bool:
    """True when ``spec`` names a registry entry (``name`` or ``name@1.2.3``; a name has no dot
    and no path separator) rather than a file."""
    return bool(NAME.match(spec))


def roots(user_root: Path | None) -> list[Path]:
    return [r for r in (user_root, ZOO) if r is not None]


def entries(user_root: Path | None) -> list[Entry]:
    """Every model in the registry, user entries first (they shadow the zoo's by name)."""
    seen: dict[str, Entry] = {}
    for root in roots(user_root):
        if not root.is_dir():
            continue
        for manifest in sorted(root.glob("*/*.json")):
            if manifest.stem != manifest.parent.name or manifest.stem in seen:
                continue
            try:
                m = ModelManifest.load(manifest)
            except VigilError:
                continue  # not a model folder (or a broken one: `resolve` reports it by name)
            parent = m.lineage.get("parent") or {}
            seen[m.name] = Entry(
                name=m.name,
                version=m.version,
                manifest=manifest,
                roles=tuple(m.files),
                parent=f"{parent['name']}@{parent['version']}" if parent else "",
            )
    return list(seen.values())


def resolve(spec: str, user_root: Path | None) -> Path:
    """The manifest path of registry reference ``name[@version]``; VigilError if absent."""
    name, _, version = spec.partition("@")
    for root in roots(user_root):
        path = root / name / f"{name}.json"
        if path.is_file():
            manifest = ModelManifest.load(path)
            if version and manifest.version != version:
                raise VigilError(
                    f"model {name!r} in the registry is version {manifest.version}, not {version}"
                )
            return path
    known = ", ".join(e.name for e in entries(user_root)) or "none"
    raise VigilError(f"no model named {name!r} in the registry (have: {known})")


def bump_minor(version: str) -> str:
    """``1.2.3`` -> ``1.3.0`` (a derived model: same interface, different weights)."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return "1.0.0"
    return f"{parts[0]}.{int(parts[1]) + 1}.0"
