"""The embedded event store: SQLite in WAL mode, written by one thread in batches.

- ``publish`` (called from the inference thread's handoff) only appends to a bounded drop-oldest
  buffer: it never touches the database and never waits.
- The writer thread inserts batches in one transaction each. A locked database (another process
  holding a lock past ``busy_timeout_ms``), a full disk or any other database error is counted
  (``errors[reason]``), logged at most once per 10 s, and the batch is retried with growing
  delays while new events keep buffering; beyond ``queue`` the oldest are dropped and counted.
  The pipeline never waits for the database.
- WAL with ``synchronous=NORMAL``: a crash of the process loses at most the last transactions
  and never corrupts the file (SQLite's guarantee; a test kills a writer mid-insert).
- Retention: every ``retention_interval_s`` events older than ``max_age_days`` are deleted, then
  the oldest until the live data fits ``max_size_mb``; freed pages go back to the file system
  (incremental vacuum) and the WAL is truncated.
- Events a gateway takes from the cluster's consumer group carry their source (the Redis stream
  entry id): ``(stream, source)`` is unique, so an entry delivered twice (a gateway died between
  committing and acknowledging it) is stored once; the second copy is counted in ``duplicates``.
- Queries open their own read-only connection (WAL readers never block the writer), and are
  run off the event loop by the caller.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.events import EVENT_KINDS, Event
from pipeline.config import EventStoreConfig
from pipeline.types import VigilError
from server.buffer import DropOldest

SCHEMA_VERSION = 2  # 2: the ``source`` column and its unique index (a v1 file is migrated)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    pts REAL NOT NULL,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule TEXT,
    track INTEGER,
    class TEXT,
    dir TEXT,
    dwell REAL,
    count INTEGER,
    data TEXT NOT NULL,
    source TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_stream_ts ON events (stream, ts);
CREATE INDEX IF NOT EXISTS events_rule_ts ON events (stream, rule, ts);
"""
_SOURCE_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS events_source ON events (stream, source) "
    "WHERE source IS NOT NULL"
)
_INSERT = (
    "INSERT INTO events (ts, pts, stream, kind, rule, track, class, dir, dwell, count, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
Row = tuple[float, float, str, str, str | None, int | None, str | None, str | None,
            float | None, int | None, str]  # fmt: skip
_INSERT_ONCE = (
    "INSERT INTO events (ts, pts, stream, kind, rule, track, class, dir, dwell, count, data, "
    "source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (stream, source) WHERE source IS NOT NULL DO NOTHING"
)
MAX_PAGE = 1000


def _row(e: Event, data: bytes) -> Row:
    return (e.ts, e.pts, e.stream, e.kind, e.rule, e.track, e.class_name, e.direction,
            e.dwell_s, e.count, data.decode())  # fmt: skip


def _reason(exc: sqlite3.Error, folder: Path) -> str:
    """``locked``, ``full`` or ``io`` (any other database or file error). SQLite reports a full
    file system as SQLITE_FULL or, when a WAL or shared-memory file cannot grow, as an I/O
    error: the free space tells those apart."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc):
        return "locked"
    if name.startswith("SQLITE_FULL"):
        return "full"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "io"
    return "full" if free < 1024 * 1024 else "io"


@dataclass(frozen=True)
class EventQuery:
    """Filters of ``GET /api/events``: every field optional; ``cursor`` is the ``next`` of the
    previous page; ``order`` ``asc`` (oldest first) or ``desc``."""

    stream: str | None = None
    rule: str | None = None
    kinds: tuple[str, ...] = ()
    class_name: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    cursor: int | None = None
    order: str = "asc"

    def check(self) -> None:
        bad = [k for k in self.kinds if k not in EVENT_KINDS]
        if bad:
            raise VigilError(f"unknown event kind {bad[0]!r} (one of {', '.join(EVENT_KINDS)})")
        if not 1 <= self.limit <= MAX_PAGE:
            raise VigilError(f"limit must be in [1, {MAX_PAGE}]")
        if self.order not in ("asc", "desc"):
            raise VigilError("order must be asc or desc")

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("stream", self.stream), ("rule", self.rule),
                              ("class", self.class_name)):  # fmt: skip
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.kinds:
            clauses.append(f"kind IN ({', '.join('?' * len(self.kinds))})")
            args += list(self.kinds)
        if self.since is not None:
            clauses.append("ts >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("ts < ?")
            args.append(self.until)
        if self.cursor is not None:
            clauses.append("id > ?" if self.order == "asc" else "id < ?")
            args.append(self.cursor)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class EventStore:
    """The event database of one server. ``log(key, line)`` is a throttled logger."""

    name = "event_store"

    def __init__(self, cfg: EventStoreConfig, log: Callable[[str, str], None]) -> None:
        self.cfg = cfg
        self.path = Path(cfg.path)
        self._log = log
        self.buffer: DropOldest[Row] = DropOldest(cfg.queue)
        self.written = 0
        self.duplicates = 0  # write() rows whose (stream, source) was already stored
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self.size_bytes = 0
        self.deleted = 0
        self._stop = threading.Event()
        self._db: sqlite3.Connection | None = None
        self._sync_db: sqlite3.Connection | None = None  # write(): its own connection
        self._sync_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="vigil-event-store", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Create the database (VigilError if impossible) and start the writer."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                db.execute(f"PRAGMA busy_timeout = {int(self.cfg.busy_timeout_ms)}")
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # a new file only, before WAL
                db.execute("PRAGMA journal_mode = WAL")
                db.executescript(_SCHEMA)
                _migrate(db)
                db.commit()
        except (OSError, sqlite3.Error) as e:
            raise VigilError(
                f"events.path {self.path}: cannot open the event database ({e})"
            ) from None
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered (within ``timeout``), then stop."""
        self._stop.set()
        self.buffer.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._sync_lock:
            if self._sync_db is not None:
                self._sync_db.close()
                self._sync_db = None

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and not self.last_error

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        if readonly:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA journal_size_limit = 67108864")
        db.execute(f"PRAGMA busy_timeout = {int(self.cfg.busy_timeout_ms)}")
        return db

    # -- producer side -----------------------------------------------------------------------
    def publish(self, events: Sequence[Event], data: Sequence[bytes]) -> None:
        """Buffer events for writing; never waits (called from the inference thread)."""
        self.buffer.put(_row(e, d) for e, d in zip(events, data, strict=True))

    def write(self, events: Sequence[Event], data: Sequence[bytes], sources: Sequence[str]) -> int:
        """Write now, in one transaction, and return only once it is committed (a gateway's
        consumer-group path acknowledges the entries to Redis after this). ``sources`` names
        each event's origin (its Redis stream entry id): an event whose ``(stream, source)`` is
        already stored is skipped and counted in ``duplicates``. Returns how many were new.
        sqlite3.Error propagates: the caller leaves the entries pending and they are retried."""
        rows = [(*_row(e, d), s) for e, d, s in zip(events, data, sources, strict=True)]
        with self._sync_lock:
            if self._sync_db is None:
                self._sync_db = self._connect()
            db = self._sync_db
            before = db.total_changes
            with db:
                db.executemany(_INSERT_ONCE, rows)
            new = db.total_changes - before
        self.written += new
        self.duplicates += len(rows) - new
        return new

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        db, self._db = self._db, None
        delay = 0.0
        next_retention = time.monotonic()
        try:
            while True:
                stopping = self._stop.is_set()
                batch = self.buffer.peek(self.cfg.batch_size, self.cfg.flush_interval_s)
                if not batch and (stopping or self.buffer.closed):
                    return
                try:
                    if db is None:
                        db = self._connect()
                    if batch:
                        with db:
                            db.executemany(_INSERT, [row for _, row in batch])
                        self.buffer.ack(batch[-1][0])
                        self.written += len(batch)
                    if time.monotonic() >= next_retention:
                        self._retention(db)
                        next_retention = time.monotonic() + self.cfg.retention_interval_s
                    self.last_error, delay = "", 0.0
                except sqlite3.Error as e:
                    delay = self._failed(e, delay)
                    if stopping:
                        return  # shutting down: what could not be written is lost (counted)
                    self._stop.wait(delay)
        finally:
            if db is not None:
                db.close()

    def _failed(self, exc: sqlite3.Error, delay: float) -> float:
        reason = _reason(exc, self.path.parent)
        self.errors[reason] = self.errors.get(reason, 0) + 1
        self.last_error = f"{reason}: {exc}"[:300]
        self._log(f"events:{reason}", f"vigil: event store {self.path}: {self.last_error} "
                  f"({len(self.buffer)} events waiting)")  # fmt: skip
        return min(30.0, max(0.2, delay * 2))

    def _retention(self, db: sqlite3.Connection) -> None:
        cfg = self.cfg
        with db:
            if cfg.max_age_days > 0:
                cur = db.execute("DELETE FROM events WHERE ts < ?",
                                 (time.time() - cfg.max_age_days * 86400,))  # fmt: skip
                self.deleted += cur.rowcount
            limit = cfg.max_size_mb * 1024 * 1024
            while self._used_bytes(db) > limit:
                n = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                if n == 0:
                    break
                cur = db.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                    (max(1, n // 10),),
                )
                self.deleted += cur.rowcount
        db.executescript(
            "PRAGMA incremental_vacuum;"
        )  # stepped to the end (execute stops at one page)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.size_bytes = self._used_bytes(db)

    @staticmethod
    def _used_bytes(db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    # -- queries (call off the event loop) ---------------------------------------------------
    def query(self, q: EventQuery) -> bytes:
        """One page of events as JSON bytes: ``{"events": [...], "next": cursor | null}``."""
        q.check()
        where, args = q.where()
        order = "ASC" if q.order == "asc" else "DESC"
        sql = f"SELECT id, data FROM events{where} ORDER BY id {order} LIMIT ?"
        with contextlib.closing(self._connect(readonly=True)) as db:
            rows = db.execute(sql, [*args, q.limit + 1]).fetchall()
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        cursor = rows[-1][0] if more and rows else None
        body = ",".join(r[1] for r in rows)
        return f'{{"events":[{body}],"next":{json.dumps(cursor)}}}'.encode()

    def counts(self, stream: str, since: float, until: float | None = None) -> dict[str, Any]:
        """Counts of ``stream``'s events with ``since <= ts < until``, in the shape of
        ``analytics.counts.Counts.snapshot`` (rules with no events in the window are absent)."""
        q = EventQuery(stream=stream, since=since, until=until)
        where, args = q.where()
        sql = (
            "SELECT kind, rule, class, dir, COUNT(*), SUM(dwell), MAX(count) "
            f"FROM events{where} AND rule IS NOT NULL AND class IS NOT NULL "
            "GROUP BY kind, rule, class, dir"
        )
        with contextlib.closing(self._connect(readonly=True)) as db:
            rows = db.execute(sql, args).fetchall()
        return aggregate_counts(rows, since)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file of any earlier schema to ``SCHEMA_VERSION`` (in the caller's transaction)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "source" not in columns:  # schema 1
        db.execute("ALTER TABLE events ADD COLUMN source TEXT")
    db.execute(_SOURCE_INDEX)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))


_ZONE_KEYS = {"zone_enter": "entered", "zone_exit": "exited", "zone_spawn": "spawned",
              "zone_loiter": "loitering"}  # fmt: skip


def aggregate_counts(rows: list[tuple[Any, ...]], since: float) -> dict[str, Any]:
    """``(kind, rule, class, dir, n, dwell_sum, max_count)`` rows -> the counts shape."""
    lines: dict[str, dict[str, dict[str, int]]] = {}
    zones: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, rule, cls, direction, n, dwell, peak in rows:
        if kind == "line_cross" and direction in ("in", "out"):
            lines.setdefault(rule, {"in": {}, "out": {}})[direction][cls] = n
            continue
        zone = zones.setdefault(rule, {k: {} for k in (*_ZONE_KEYS.values(), "max_occupancy",
                                                        "mean_dwell_s")})  # fmt: skip
        if kind in _ZONE_KEYS:
            zone[_ZONE_KEYS[kind]][cls] = n
        if kind == "zone_exit" and dwell is not None and n:
            zone["mean_dwell_s"][cls] = round(dwell / n, 3)
        if kind == "zone_occupancy" and peak is not None:
            zone["max_occupancy"][cls] = peak
    return {"since_ts": round(since, 3), "lines": lines, "zones": zones}
