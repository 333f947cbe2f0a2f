"""Replay sinks: ``tracks.txt`` (MOTChallenge), ``messages.jsonl`` (v1 wire), ``summary.json``
and, with analytics, ``events.jsonl`` (v1 events, one per line) and ``counts.json``.

Files are written under temporary names and renamed on a clean close, so an interrupted replay
never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from analytics.events import Event, encode_event
from pipeline.encode import encode_message, mot_rows
from pipeline.types import Frame, Tracks


class ReplaySinks:
    def __init__(self, out_dir: Path, stream_id: str, events: bool = False) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.stream_id = stream_id
        self._seq = 0
        self._ids: set[int] = set()
        names = ("tracks.txt", "messages.jsonl", *(("events.jsonl",) if events else ()))
        self._files: dict[str, IO[bytes]] = {
            name: (out_dir / f".{name}.partial").open("wb") for name in names
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

    def write_events(self, events: list[Event]) -> None:
        if events:
            self._files["events.jsonl"].write(b"".join(encode_event(e) + b"\n" for e in events))

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

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """``name`` (``summary.json``, ``counts.json``) written whole or not at all."""
        tmp = self.out_dir / f".{name}.partial"
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.out_dir / name)
