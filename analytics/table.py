"""A bounded table of per-track state: one numpy column per quantity, one row per live track.

Rows are kept sorted by track id, so a frame's tracks are found with one ``searchsorted``.
Columns may have trailing dimensions (``(K, R)`` per rule, ``(K, R, 4)`` boxes); each has a
fill value for new rows. Nothing here loops over tracks.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Table:
    """Named columns with a shared first dimension ``K`` (the tracks); ``ids (K,) int64``."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self._cols: dict[str, np.ndarray] = {}
        self._fill: dict[str, Any] = {}

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        return self._cols[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        if value.shape[0] != len(self):
            raise ValueError(f"column {name}: {value.shape[0]} rows, table has {len(self)}")
        self._cols[name] = value

    def define(self, name: str, dtype: Any, fill: Any, trail: tuple[int, ...] = ()) -> None:
        """Add (or re-create, filled) a column of shape ``(K, *trail)``."""
        self._fill[name] = fill
        self._cols[name] = np.full((len(self), *trail), fill, dtype)

    def reshape_rules(self, prefix: str, keep: np.ndarray, count: int) -> None:
        """Re-index the per-rule axis (axis 1) of every column named ``prefix*``: new rule ``j``
        takes old rule ``keep[j]``, or starts filled where ``keep[j] < 0``. ``count`` = new R."""
        for name in [n for n in self._cols if n.startswith(prefix)]:
            old = self._cols[name]
            new = np.full((len(self), count, *old.shape[2:]), self._fill[name], old.dtype)
            src = keep >= 0
            new[:, src] = old[:, keep[src]]
            self._cols[name] = new

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, adding rows (filled) for ids not in the table yet. ``ids`` must be
        unique. Returns ``(M,) int64``."""
        pos = np.searchsorted(self.ids, ids)
        known = pos < len(self)
        known[known] = self.ids[pos[known]] == ids[known]
        if not known.all():
            self._append(ids[~known])
            pos = np.searchsorted(self.ids, ids)
        return pos

    def _append(self, new_ids: np.ndarray) -> None:
        n = len(new_ids)
        ids = np.concatenate((self.ids, new_ids.astype(np.int64)))
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        for name, col in self._cols.items():
            added = np.full((n, *col.shape[1:]), self._fill[name], col.dtype)
            self._cols[name] = np.concatenate((col, added))[order]

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where ``mask`` is False."""
        self.ids = self.ids[mask]
        for name in self._cols:
            self._cols[name] = self._cols[name][mask]

    def nbytes(self) -> int:
        return int(self.ids.nbytes + sum(c.nbytes for c in self._cols.values()))
