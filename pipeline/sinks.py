"""Replay sinks: ``tracks.txt`` (MOTChallenge), ``messages.jsonl`` (v1 wire) and ``summary.json``.

Files are written under temporary names and renamed on a clean close, so an interrupted replay
never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from pipeline.encode import encode_message, mot_rows
from pipeline.types import Frame, Tracks


class ReplaySinks:
    def __init__(self, out_dir: Path, stream_id: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.stream_id = stream_id
        self._seq = 0
        self._ids: set[int] = set()
        self._files: dict[str, IO[bytes]] = {
            name: (out_dir / f".{name}.partial").open("wb")
            for name in ("tracks.txt", "messages.jsonl")
        }
        self._closed = False
        self._ok = True

    @property
    def unique_tracks(self) -> int:
        return len(self._ids)

    def write(self, frame: Frame, tracks: Tracks) -> None:
        self._files["tracks.txt"].write(mot_rows(tracks).encode())
        msg = encode_message(tracks, self.stream_id, self._seq, frame.arrival)
        self._files["messages.jsonl"].write(msg + b"\n")
        self._seq += 1
        self._ids.update(tracks.track_id.tolist())

    def fail(self) -> None:
        self._ok = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name, f in self._files.items():
            f.close()
            partial = self.out_dir / f".{name}.partial"
            if self._ok:
                os.replace(partial, self.out_dir / name)
            else:
                partial.unlink(missing_ok=True)

    def write_summary(self, summary: dict[str, Any]) -> None:
        tmp = self.out_dir / ".summary.json.partial"
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, self.out_dir / "summary.json")
