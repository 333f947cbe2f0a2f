"""The event store for real: SQLite files on disk, a second process holding a lock, a full
file system (a 2 MB tmpfs in a private mount namespace), a writer killed mid-insert."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analytics.events import Event, encode_event
from pipeline.config import EventStoreConfig
from server.event_store import EventQuery, EventStore
from tests.factories import REPO, wait_until

NOW = time.time()


def _events(n: int, start: int = 0, stream: str = "cam", ts: float = NOW) -> list[Event]:
    kinds = ("line_cross", "zone_enter", "zone_exit")
    return [
        Event(
            kinds[i % 3], stream, i, i / 10, ts + i / 10, rule="door" if i % 3 == 0 else "desk",
            track=i, class_id=0, class_name="person", direction="in" if i % 3 == 0 else None,
            box=(1.0, 2.0, 3.0, 4.0), dwell_s=2.0 if i % 3 == 2 else None, seq=i,
        )
        for i in range(start, start + n)
    ]  # fmt: skip


def _store(tmp: Path, log: list[str] | None = None, **cfg: object) -> EventStore:
    settings = {"path": str(tmp / "events.db"), "flush_interval_s": 0.05, **cfg}
    lines = log if log is not None else []
    store = EventStore(EventStoreConfig(**settings), lambda _k, line: lines.append(line))  # type: ignore[arg-type]
    store.start()
    return store


def _publish(store: EventStore, events: list[Event]) -> None:
    store.publish(events, [encode_event(e) for e in events])


def test_queries_page_and_filter_and_count(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        _publish(store, _events(250) + _events(20, stream="other"))
        wait_until(lambda: store.written == 270, 20, "events written")
        seen: list[int] = []
        cursor = None
        while True:
            page = json.loads(store.query(EventQuery(stream="cam", limit=100, cursor=cursor)))
            seen += [e["seq"] for e in page["events"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == list(range(250))  # every event once, in order
        newest = json.loads(store.query(EventQuery(stream="cam", limit=5, order="desc")))
        assert [e["seq"] for e in newest["events"]] == [249, 248, 247, 246, 245]
        doors = json.loads(store.query(EventQuery(rule="door", kinds=("line_cross",), limit=1000)))
        assert len(doors["events"]) == 84 + 7  # both streams
        window = EventQuery(stream="cam", since=NOW + 10, until=NOW + 20, limit=1000)
        assert len(json.loads(store.query(window))["events"]) == 100
        counts = store.counts("cam", NOW + 10, NOW + 20)
        assert counts["lines"]["door"]["in"] == {"person": 33}  # i = 102, 105, ..., 198
        assert counts["zones"]["desk"]["exited"] == {"person": 33}
        assert counts["zones"]["desk"]["mean_dwell_s"] == {"person": 2.0}
    finally:
        store.close()


def test_a_locked_database_is_counted_and_never_stalls(tmp_path: Path) -> None:
    log: list[str] = []
    store = _store(tmp_path, log, busy_timeout_ms=100, queue=300)
    other = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process's writer holds the lock
        for i in range(10):  # returns while the lock is held: publishing never waits for it
            _publish(store, _events(100, start=100 * i))
        wait_until(lambda: store.errors.get("locked", 0) >= 1 and any("locked" in line
                   for line in log), 20, "the lock noticed and logged")  # fmt: skip
        assert len(store.buffer) == 300 and store.buffer.dropped == 700  # bounded, oldest out
        other.execute("ROLLBACK")
        wait_until(lambda: store.written == 300, 30, "written after the lock went")
        wait_until(lambda: not store.last_error, 30, "the error cleared")
        first = json.loads(store.query(EventQuery(limit=1)))["events"][0]
        assert first["seq"] == 700  # the newest 300 kept
    finally:
        other.close()
        store.close()


FULL_DISK = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from tests.test_event_store import _events, _publish, _store
from pathlib import Path
root = Path(sys.argv[1])
store = _store(root, queue=500, busy_timeout_ms=100)
filler = root / "filler"
with open(filler, "wb") as f:  # fill the file system
    try:
        while True:
            f.write(b"x" * 65536)
            f.flush()
    except OSError:
        pass
for i in range(40):
    _publish(store, _events(100, start=100 * i))
    time.sleep(0.02)
deadline = time.monotonic() + 30
while not store.errors.get("full") and time.monotonic() < deadline:
    time.sleep(0.1)
full = dict(store.errors), len(store.buffer), store.buffer.dropped, store.written
filler.unlink()  # space again
deadline = time.monotonic() + 30
while len(store.buffer) and time.monotonic() < deadline:
    time.sleep(0.1)
store.close()
print(json.dumps({{"full": full, "after": [store.written, len(store.buffer), store.last_error]}}))
"""


def test_a_full_disk_is_counted_and_recovers(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux unshare for a private tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = f'mount -t tmpfs -o size=2m tmpfs {mount} && exec {sys.executable} -c "$0" {mount}'
    run = subprocess.run(
        [unshare, "-rm", "sh", "-c", script, FULL_DISK.format(repo=str(REPO))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if "mount" in run.stderr and run.returncode != 0 and "Traceback" not in run.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    (errors, waiting, dropped, written), (total, left, last_error) = result["full"], result["after"]
    assert errors.get("full", 0) >= 1 and waiting <= 500 and dropped > 0
    assert left == 0 and total > written and not last_error
    assert "vigil: event store" in run.stdout + run.stderr or errors  # it said so


CRASH = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.test_event_store import _events, _publish, _store
from pathlib import Path
store = _store(Path(sys.argv[1]), batch_size=50, flush_interval_s=0.01)
i = 0
while True:
    _publish(store, _events(50, start=i))
    i += 50
    if store.written:
        print("writing", flush=True)
    time.sleep(0.001)
"""


def test_a_crash_mid_write_never_corrupts_the_file(tmp_path: Path) -> None:
    for attempt in range(3):
        folder = tmp_path / f"run{attempt}"
        folder.mkdir()
        _crash_and_reopen(folder, 0.2 * attempt)


def _crash_and_reopen(folder: Path, after_s: float) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH.format(repo=str(REPO)), str(folder)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(after_s)  # a little later each time: killed at different points of a write
    proc.send_signal(signal.SIGKILL)  # no clean shutdown of any kind
    proc.wait()
    db = sqlite3.connect(folder / "events.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    n, ids = db.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM events").fetchone()
    assert n > 0 and n == ids
    db.close()
    store = _store(folder)  # and it opens again and carries on
    _publish(store, _events(10, start=10**6))
    wait_until(lambda: store.written == 10, 20, "written after the crash")
    store.close()


def test_retention_by_age_and_size(tmp_path: Path) -> None:
    store = _store(tmp_path, max_age_days=1.0, max_size_mb=1.0, retention_interval_s=1.0)
    try:
        _publish(store, _events(100, ts=NOW - 3 * 86400))  # three days old
        _publish(store, _events(30_000, start=100))
        wait_until(lambda: store.written == 30_100, 60, "written")
        db_file = tmp_path / "events.db"
        wait_until(
            lambda: store.deleted >= 100 and db_file.stat().st_size <= 1024 * 1024, 30,
            "retention kept the file at 1 MB",
        )  # fmt: skip
        assert 0 < store.size_bytes <= 1024 * 1024
        oldest = json.loads(store.query(EventQuery(limit=1)))["events"][0]
        assert oldest["ts"] > NOW - 86400
        newest = json.loads(store.query(EventQuery(limit=1, order="desc")))["events"][0]
        assert newest["seq"] == 30_099  # the oldest went, the newest stayed
    finally:
        store.close()


def test_an_entry_delivered_twice_is_stored_once(tmp_path: Path) -> None:
    """A gateway that committed a batch and died before acknowledging it: the batch comes again
    (to it or another gateway) and only what is new is stored; local events (no source) are
    never deduplicated."""
    store = _store(tmp_path)
    try:
        first, again = _events(5), _events(8)  # the redelivery: the same 5, then 3 new
        data = [encode_event(e) for e in again]
        ids = [f"1700000000000-{i}" for i in range(8)]
        assert store.write(first, data[:5], ids[:5]) == 5
        assert store.write(again, data, ids) == 3
        assert (store.written, store.duplicates) == (8, 5)
        other = _events(5, stream="other")  # the same entry ids in another camera's stream
        assert store.write(other, [encode_event(e) for e in other], ids[:5]) == 5
        _publish(store, _events(2))  # the single-process path: no source, both stored
        wait_until(lambda: store.written == 15, 20, "published events written")
        page = json.loads(store.query(EventQuery(stream="cam", limit=100)))
        assert [e["seq"] for e in page["events"]] == [*range(8), 0, 1]  # in storage order
    finally:
        store.close()


def test_a_schema_1_file_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "events.db")  # the v1 layout, as an earlier release wrote it
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '1');"
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, pts REAL NOT NULL,"
        " stream TEXT NOT NULL, kind TEXT NOT NULL, rule TEXT, track INTEGER, class TEXT,"
        " dir TEXT, dwell REAL, count INTEGER, data TEXT NOT NULL);"
    )
    old = _events(1)[0]
    db.execute(
        "INSERT INTO events (ts, pts, stream, kind, data) VALUES (?, ?, ?, ?, ?)",
        (old.ts, old.pts, old.stream, old.kind, encode_event(old).decode()),
    )
    db.commit()
    db.close()
    store = _store(tmp_path)
    try:
        events = _events(2, start=1)
        data = [encode_event(e) for e in events]
        assert store.write(events, data, ["1-0", "1-1"]) == 2
        assert store.write(events, data, ["1-0", "1-1"]) == 0
        page = json.loads(store.query(EventQuery(limit=10)))
        assert [e["seq"] for e in page["events"]] == [0, 1, 2]
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
    db.close()
