"""The live inference step with a fake engine: batching order, per-stream guards, removal."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.batcher import CrossStreamBatcher, LatestSlot
from pipeline.live_step import Published, StepGuard, StreamRuntime, ThrottledLog, run_step
from pipeline.types import Detections, Frame, Tracks
from tests.factories import FakeStream, dets


class FakeEngine:
    """One detection per frame at x = frame index; raises when told to."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail = False
        self.info = SimpleNamespace(class_names=("person",))  # what the analytics read
        self.embedder: object | None = None

    def process(
        self, frames: Sequence[Frame], timings: dict[str, float] | None = None
    ) -> tuple[list[Detections], list[np.ndarray | None]]:
        self.calls.append([f.stream_id for f in frames])
        if self.fail:
            raise RuntimeError("device lost")
        out = [dets([[f.index, 0, f.index + 10, 10]]) for f in frames]
        return out, [None] * len(frames)


class EchoTracker:
    """Reports every detection as track 1; raises on frames listed in ``bad``."""

    def __init__(self, bad: set[int] | None = None) -> None:
        self.bad = bad or set()

    def update(
        self, detections: Detections, embeddings: np.ndarray | None, frame_index: int = 0,
        pts: float = 0.0,
    ) -> Tracks:  # fmt: skip
        if frame_index in self.bad:
            raise ValueError(f"bad frame {frame_index}")
        n = len(detections)
        return Tracks(
            detections.xyxy, np.ones(n, np.int64), detections.class_id, detections.confidence,
            np.arange(n, dtype=np.int32), frame_index=frame_index, pts=pts,
        )  # fmt: skip


def _frame(sid: str, i: int) -> Frame:
    return Frame(sid, i, i / 10, np.zeros((4, 4, 3), np.uint8), 1000.0 + i)


def _runtime(sid: str, bad: set[int] | None = None) -> StreamRuntime:
    return StreamRuntime(FakeStream(sid), EchoTracker(bad))


def _quiet_guard() -> tuple[StepGuard, list[str]]:
    lines: list[str] = []
    return StepGuard(log=ThrottledLog(60.0, lines.append)), lines


def test_round_robin_batches_publish_every_stream_in_order() -> None:
    streams = {s: _runtime(s) for s in ("a", "b", "c", "d", "e")}
    slots = {s: LatestSlot() for s in streams}
    batcher = CrossStreamBatcher(max_batch=2, max_wait_ms=0)
    engine, out = FakeEngine(), []
    guard, _ = _quiet_guard()
    for i in range(5):  # every stream has a frame ready; batches of 2, round robin
        for s, slot in slots.items():
            if slot.depth == 0:
                slot.put(_frame(s, i))
        chosen = batcher.order([s for s in slots if slots[s].depth])
        batch = [(streams[s], slots[s].take()) for s in chosen]
        run_step([(st, f) for st, f in batch if f is not None], engine, out.append, guard)
    assert [len(c) for c in engine.calls] == [2] * 5
    served = [s for c in engine.calls for s in c]
    assert {s: served.count(s) for s in streams} == dict.fromkeys(streams, 2)
    for s, st in streams.items():
        mine = [m for m in out if m.stream == s]
        assert [m.seq for m in mine] == [0, 1] and st.seq == 2
        assert st.stream.frames_inferred == 2


def test_one_stream_raising_does_not_stop_the_others() -> None:
    a, b = _runtime("a", bad={3}), _runtime("b")
    engine, out = FakeEngine(), []
    guard, lines = _quiet_guard()
    for i in range(6):
        run_step([(a, _frame("a", i)), (b, _frame("b", i))], engine, out.append, guard)
    assert [m.seq for m in out if m.stream == "b"] == list(range(6))
    assert [m.tracks.frame_index for m in out if m.stream == "a"] == [0, 1, 2, 4, 5]
    assert a.errors == 1 and b.errors == 0 and guard.stream_errors == 1
    assert a.stream.last_error == "tracker failed: ValueError: bad frame 3"
    assert lines == ["vigil: stream a: tracker failed: ValueError: bad frame 3"]


def test_a_failing_publish_is_that_streams_error() -> None:
    a, b = _runtime("a"), _runtime("b")
    guard, _ = _quiet_guard()
    out: list[Published] = []

    def publish(msg: Published) -> None:
        if msg.stream == "a":
            raise OSError("socket gone")
        out.append(msg)

    run_step([(a, _frame("a", 0)), (b, _frame("b", 0))], FakeEngine(), publish, guard)
    assert [m.stream for m in out] == ["b"] and a.seq == 0 and b.seq == 1
    assert a.stream.last_error.startswith("publish failed: OSError")


def test_engine_failure_is_counted_and_charged_to_the_batch() -> None:
    a, b = _runtime("a"), _runtime("b")
    engine, out = FakeEngine(), []
    guard, lines = _quiet_guard()
    engine.fail = True
    for i in range(3):
        assert run_step([(a, _frame("a", i)), (b, _frame("b", i))], engine, out.append, guard) == {}
    assert guard.engine_failures == 3 and not out
    assert (
        a.stream.last_error == b.stream.last_error == "inference failed: RuntimeError: device lost"
    )
    assert len(lines) == 1  # throttled: one line, not one per batch
    engine.fail = False
    run_step([(a, _frame("a", 3))], engine, out.append, guard)
    assert [m.seq for m in out] == [0]


def test_a_stream_removed_mid_batch_publishes_nothing() -> None:
    a, b = _runtime("a"), _runtime("b")
    guard, _ = _quiet_guard()
    out: list[Published] = []

    class RemovingEngine(FakeEngine):
        def process(self, frames, timings=None):  # type: ignore[no-untyped-def]
            a.removed = True  # DELETE arrives while the detector runs
            return super().process(frames, timings)

    run_step([(a, _frame("a", 0)), (b, _frame("b", 0))], RemovingEngine(), out.append, guard)
    assert [m.stream for m in out] == ["b"] and a.seq == 0


def test_throttled_log_summarizes_and_stays_bounded() -> None:
    lines: list[str] = []
    log = ThrottledLog(interval_s=0.0, write=lines.append)
    log("k", "first")
    assert lines == ["first"]
    log = ThrottledLog(interval_s=3600.0, write=lines.append)
    for _ in range(1000):
        log("k", "again")
    assert lines[-1] == "again" and len(lines) == 2
    for i in range(10_000):
        log(f"key{i}", "x")
    assert len(log._last) <= 4096


def test_handoff_limit_drops_and_counts_instead_of_queueing() -> None:
    """The server's handoff to the event loop: at most HANDOFF_LIMIT messages in flight."""
    import asyncio

    from pipeline.config import VigilConfig
    from server.app import HANDOFF_LIMIT, Runtime

    rt = Runtime(VigilConfig())
    loop = asyncio.new_event_loop()
    try:
        rt.loop = loop  # not running: nothing is delivered, so everything stays in flight
        msg = Published("a", 0, 0.0, b"{}", Tracks.empty())
        sender = threading.Thread(
            target=lambda: [rt.handoff(msg) for _ in range(HANDOFF_LIMIT + 500)]
        )
        sender.start()
        sender.join(10)
        assert not sender.is_alive()  # the inference thread never blocked
        assert rt._pending == HANDOFF_LIMIT
        dropped = rt.metrics.handoff_dropped._value.get()
        assert dropped == pytest.approx(500)
    finally:
        loop.close()


def test_a_dead_inference_thread_makes_readyz_503_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncio

    from pipeline.config import VigilConfig
    from pipeline.live import LivePipeline
    from server.app import LocalStreams, create_app
    from tests.factories import wait_until

    cfg = VigilConfig()
    pipe = LivePipeline(cfg, lambda _: None, engine=FakeEngine())  # type: ignore[arg-type]

    def broken_collect() -> list[tuple[StreamRuntime, Frame]]:
        raise MemoryError("cannot allocate the batch")

    pipe._collect = broken_collect  # type: ignore[method-assign]
    pipe.start()
    wait_until(lambda: pipe.failure, 10, "the pipeline notices its thread died")
    assert not pipe.ready
    assert pipe.failure == "inference thread died: MemoryError: cannot allocate the batch"
    assert "vigil: inference thread died: MemoryError" in capsys.readouterr().err
    pipe.stop(1.0)

    app = create_app(cfg)
    app.state.runtime.backend = LocalStreams(pipe)
    readyz = next(r for r in app.routes if getattr(r, "path", "") == "/readyz")
    response = asyncio.run(readyz.endpoint())  # type: ignore[attr-defined]
    assert response.status_code == 503
    assert b"inference thread died" in response.body


def test_each_stream_runs_the_tracker_it_names(synthetic_clip: Path) -> None:
    """``tracker`` in a stream's config picks its tracker; an appearance tracker on a server
    started without an embedder is refused with one line, and nothing is started for it."""
    from pipeline.config import StreamConfig, load_config, parse_stream
    from pipeline.live import LivePipeline
    from pipeline.types import VigilError
    from trackers.bytetrack import ByteTracker
    from trackers.deepsort import VectorizedDeepSort

    def spec(sid: str, tracker: str = "") -> StreamConfig:
        return parse_stream({"id": sid, "url": str(synthetic_clip), "tracker": tracker})

    engine = FakeEngine()
    engine.embedder = object()
    pipe = LivePipeline(load_config(None), lambda _: None, engine=engine)  # type: ignore[arg-type]
    try:
        pipe.add_stream(parse_stream({"id": "a", "url": str(synthetic_clip)}))
        pipe.add_stream(
            parse_stream({"id": "b", "url": str(synthetic_clip), "tracker": "bytetrack"})
        )
        assert isinstance(pipe._streams["a"].tracker, VectorizedDeepSort)
        assert isinstance(pipe._streams["b"].tracker, ByteTracker)
    finally:
        for sid in ("a", "b"):
            pipe.remove_stream(sid)
    motion_only = load_config(None, {"tracker.name": "bytetrack"})
    engine.embedder = None
    pipe = LivePipeline(motion_only, lambda _: None, engine=engine)  # type: ignore[arg-type]
    with pytest.raises(VigilError, match="tracker deepsort needs appearance"):
        pipe.add_stream(
            parse_stream({"id": "c", "url": str(synthetic_clip), "tracker": "deepsort"})
        )
    assert pipe.streams() == []
