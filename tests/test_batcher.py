from __future__ import annotations

import random
import threading
import tracemalloc

import numpy as np
import pytest

from pipeline.batcher import Backoff, CrossStreamBatcher, LatestSlot, RateGate
from pipeline.types import Frame


def _frame(i: int, t: float, sid: str = "s") -> Frame:
    return Frame(sid, i, i / 10, np.zeros((2, 2, 3), np.uint8), t)


def test_latest_slot_keeps_newest_and_counts_drops() -> None:
    cond = threading.Condition()
    slot = LatestSlot(cond)
    assert slot.take() is None and slot.ready_since() is None and slot.depth == 0
    for i in range(5):
        slot.put(_frame(i, float(i)))
    assert slot.depth == 1 and slot.dropped == 4 and slot.accepted == 5
    f = slot.take()
    assert f is not None and f.index == 4
    assert slot.take() is None


def test_a_fast_stream_keeps_its_place_in_the_batch_deadline() -> None:
    """A stream that replaces its frame every 2 ms must still come due: readiness is when the
    slot filled, not the arrival of the frame it holds now (that was the starvation bug)."""
    cond = threading.Condition()
    slot = LatestSlot(cond)
    batcher = CrossStreamBatcher(max_batch=8, max_wait_ms=15)
    notified = []
    real = cond.notify
    cond.notify = lambda n=1: (notified.append(1), real(n))  # type: ignore[method-assign]
    for i in range(20):
        t = 100.0 + i * 0.002
        slot.put(_frame(i, t), now=t)
        assert slot.ready_since() == 100.0  # when the slot filled
        decision = batcher.decide(1, slot.ready_since(), now=t)
    assert decision.emit  # 38 ms after the slot filled: due, however often it was replaced
    assert len(notified) == 1  # the consumer is woken on the empty -> full edge only
    assert slot.take() is not None and slot.ready_since() is None


def test_put_when_free_parks_one_frame_and_waits_for_the_consumer() -> None:
    slot = LatestSlot()
    assert slot.put_when_free(_frame(0, 0.0), timeout=0.1)  # held
    assert slot.put_when_free(_frame(1, 1.0), timeout=0.1) and slot.depth == 2  # parked
    assert not slot.put_when_free(_frame(2, 2.0), timeout=0.05)  # both places taken: gives up
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(slot.put_when_free(_frame(2, 2.0), 30.0)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and slot.dropped == 0  # waits instead of replacing
    first = slot.take()
    assert first is not None and first.index == 0
    assert slot.ready_since() is not None  # the parked frame moved in at once: ready again
    t.join(5)
    assert done == [True]
    got = [slot.take(), slot.take(), slot.take()]
    assert [f.index for f in got if f is not None] == [1, 2] and got[2] is None
    assert slot.dropped == 0 and slot.accepted == 3 and slot.depth == 0


def test_latest_slot_memory_is_one_frame_over_thousands() -> None:
    """10,000 frames of 1 MB each, a consumer that takes every 7th: exactly the replaced frames
    are counted as dropped, each take gets the newest frame, and only one frame stays alive."""
    slot = LatestSlot()
    big = np.zeros((512, 683, 3), np.uint8)  # about 1 MB
    tracemalloc.start()
    try:
        taken = 0
        for i in range(10_000):
            slot.put(Frame("s", i, i / 10, big.copy(), float(i)))
            if i % 7 == 0:
                f = slot.take()
                assert f is not None and f.index == i  # always the newest
                taken += 1
                del f
            if i == 100:
                base = tracemalloc.get_traced_memory()[0]
        peak_growth = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert slot.accepted == 10_000
    assert slot.dropped == 10_000 - taken - slot.depth
    assert peak_growth < 3 * big.nbytes  # never more than the one waiting frame (+ slack)


def test_rate_gate_admits_every_third_of_30_fps_at_10() -> None:
    gate = RateGate(10)
    admitted = [i for i in range(300) if gate.admit(i / 30)]
    assert len(admitted) == 100
    assert set(np.diff(admitted)) == {3}
    assert gate.skipped == 200
    assert all(RateGate(0).admit(i / 30) for i in range(10))


def test_rate_gate_does_not_bank_credit_over_a_stall() -> None:
    gate = RateGate(10)
    assert gate.admit(0.0)
    assert gate.admit(5.0)  # after a 5 s gap: one frame, not a burst of 50
    assert not gate.admit(5.01)


def test_batcher_emits_on_size_or_deadline() -> None:
    b = CrossStreamBatcher(max_batch=4, max_wait_ms=20)
    assert not b.decide(0, None, 1.0).emit
    d = b.decide(2, oldest_arrival=1.0, now=1.005)
    assert not d.emit and d.wait_s == pytest.approx(0.015)
    assert b.decide(2, 1.0, 1.021).emit
    assert b.decide(4, 1.0, 1.0).emit


def test_batcher_round_robin_is_fair() -> None:
    b = CrossStreamBatcher(max_batch=2, max_wait_ms=0)
    ids = ["a", "b", "c", "d", "e"]
    served = [s for _ in range(5) for s in b.order(ids)]
    assert {s: served.count(s) for s in ids} == dict.fromkeys(ids, 2)
    assert b.order([]) == []
    with pytest.raises(ValueError):
        CrossStreamBatcher(0, 10)


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(0.5, 8.0, random.Random(0))
    delays = [b.next_delay() for _ in range(8)]
    caps = [min(8.0, 0.5 * 2**i) for i in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert max(delays) <= 8.0
    b.reset()
    assert b.next_delay() <= 0.5
