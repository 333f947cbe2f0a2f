"""The model manifest: a small JSON file that travels with every converted or exported model.

It names the architecture, the class names, strides and anchors, the input size, the source
checkpoint's sha256, a semantic version, and every artefact file with its own sha256, so a
replay summary or a server log can say exactly which model ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.types import VigilError

MANIFEST_SCHEMA = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ModelManifest:
    name: str
    version: str
    architecture: dict[str, Any]
    class_names: list[str]
    strides: list[int]
    anchors_px: list[list[list[float]]]
    source_sha256: str
    source_name: str
    input_size: int = 320
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    # Derivation: {"parent": {name, version, weights_sha256}, "pruning": {...},
    # "distillation": {...}}; empty for a converted checkpoint.
    lineage: dict[str, Any] = field(default_factory=dict)
    # Measured by `vigil models report`, per artefact role: {"onnx-int8-320": {"map50_95": ...}}.
    metrics: dict[str, Any] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA

    @property
    def nc(self) -> int:
        return len(self.class_names)

    def add_file(self, role: str, path: Path, **extra: Any) -> None:
        """Record an artefact (path relative to the manifest's folder) and its sha256."""
        self.files[role] = {**extra, "path": path.name, "sha256": sha256_file(path)}

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, (json.dumps(asdict(self), indent=1) + "\n").encode())

    @staticmethod
    def load(path: Path) -> ModelManifest:
        try:
            data = json.loads(path.read_text())
            return ModelManifest(**data)
        except FileNotFoundError:
            raise VigilError(f"model manifest not found: {path}") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise VigilError(f"{path}: not a Vigil model manifest ({e})") from None

    def file_path(self, manifest_path: Path, role: str) -> Path:
        entry = self.files.get(role)
        if entry is None:
            raise VigilError(
                f"model {self.name} has no {role!r} file (has: {', '.join(self.files) or 'none'})"
            )
        return manifest_path.parent / str(entry["path"])
