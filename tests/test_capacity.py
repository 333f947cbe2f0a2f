"""Capacity: the cost model, fps allocation by priority, admission and QoS on real (unstarted)
live streams, and the REST/metrics surface on a real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.serving import serve
from pipeline.batcher import RateGate
from pipeline.capacity import CostModel, Demand, allocate, fits
from pipeline.config import SAMPLE_CLIP, CapacityConfig, StreamConfig, load_config
from pipeline.live_source import LiveStream
from pipeline.live_step import StreamRuntime
from pipeline.qos import Capacity
from pipeline.schedule import DetectSchedule
from trackers.registry import create_tracker


def _model() -> CostModel:
    m = CostModel(CapacityConfig(cpus=2.0), max_batch=8, embeds=False)
    m.observe_batch(1, 10.0)
    m.observe_batch(8, 40.0)
    return m


def test_the_detector_cost_is_interpolated_between_the_measured_batch_sizes() -> None:
    m = _model()
    assert m.detect_ms(1) == pytest.approx(10.0) and m.detect_ms(8) == pytest.approx(5.0)
    per_image_at_4 = m.detect_ms(4)
    assert 5.0 < per_image_at_4 < 10.0  # a + b * 4 on the line through (1, 10) and (8, 40)
    assert per_image_at_4 * 4 == pytest.approx(10 + 30 * 3 / 7)
    m.observe_batch(8, 80.0)  # a running mean: one slow batch moves it a little
    assert 5.0 < m.detect_ms(8) < 6.0


def test_skipping_frames_makes_a_stream_cheaper() -> None:
    m = _model()
    every = m.frame_ms(1.0, 2.0, 8)
    third = m.frame_ms(1 / 3, 2.0, 8)
    assert third < every / 2


def test_decoders_take_budget_from_the_inference_thread() -> None:
    m = _model()
    assert m.budget(0.0, 0.8) == pytest.approx(800.0)
    assert m.budget(1000.0, 0.8) == pytest.approx(400.0)  # half of 2 cores decoding
    m.observe_decode(640, 480, "h264", cpu_ms=30.72, frames=10)  # 10 ms per Mpix
    assert m.decode_ms(1280, 720, "h264") == pytest.approx(9.216)


def test_allocation_serves_priorities_in_order_and_keeps_floors() -> None:
    d = [
        Demand("low", 10.0, 1.0, 0, 10.0, 0.0),
        Demand("high", 10.0, 1.0, 9, 10.0, 0.0),
        Demand("mid", 10.0, 2.0, 5, 10.0, 0.0),
    ]
    plenty = allocate(d, 1000.0)
    assert plenty == {"low": 10.0, "high": 10.0, "mid": 10.0}
    tight = allocate(d, 200.0)  # floors take 40 ms/s; high gets its 90 more; mid the rest
    assert tight["high"] == 10.0 and tight["low"] == 1.0
    assert tight["mid"] == pytest.approx(2.0 + 70.0 / 10.0)
    starved = allocate(d, 10.0)  # not even the floors fit: every stream at its floor
    assert starved == {"low": 1.0, "high": 1.0, "mid": 2.0}
    equal = allocate([Demand("a", 10, 0, 1, 10, 0), Demand("b", 10, 0, 1, 10, 0)], 100.0)
    assert equal["a"] == pytest.approx(5.0) and equal["b"] == pytest.approx(5.0)


def test_how_many_more_fit() -> None:
    m = _model()
    new = Demand("x", 10.0, 1.0, 0, m.frame_ms(1.0, 0.0, 1), 0.0)
    n = fits(m, [], new, 0.8)
    assert n >= 8  # bigger batches make each added stream cheaper than the first
    assert fits(m, [Demand("busy", 100.0, 1.0, 0, 8.0, 0.0)], new, 0.8) < n


def _runtimes(specs: list[StreamConfig]) -> list[StreamRuntime]:
    """Real live streams, never started: admission and QoS read their specs, slots and gates."""
    return [
        StreamRuntime(LiveStream(s), create_tracker("bytetrack"), schedule=DetectSchedule())
        for s in specs
    ]


def _capacity() -> Capacity:
    cfg = load_config(None, {"capacity.cpus": 2.0})
    cap = Capacity(cfg, embeds=False)
    cap.model.observe_batch(1, 10.0)
    cap.model.observe_batch(8, 40.0)
    return cap


def test_admission_refuses_with_a_reason_or_lowers_the_fps_when_allowed() -> None:
    cap = _capacity()
    running = _runtimes([StreamConfig(id=f"c{i}", url="x.mp4", fps=10) for i in range(4)])
    fps, why = cap.admit(StreamConfig(id="ok", url="x.mp4", fps=10), running)
    assert (fps, why) == (10, "")
    fps, why = cap.admit(StreamConfig(id="big", url="x.mp4", fps=240), running)
    assert fps == 0 and "would overload" in why and "'big'" in why
    fps, why = cap.admit(StreamConfig(id="big", url="x.mp4", fps=240, min_fps=5), running)
    assert why == "" and 5 <= fps < 240
    off = Capacity(load_config(None, {"capacity.enabled": False}), embeds=False)
    assert off.admit(StreamConfig(id="big", url="x.mp4", fps=240), running) == (240, "")


def test_overload_lowers_low_priority_streams_first_and_recovers() -> None:
    cap = _capacity()
    specs = [
        StreamConfig(id="vip", url="x.mp4", fps=40, priority=9),
        StreamConfig(id="low", url="x.mp4", fps=40, priority=0, min_fps=2),
    ]
    states = _runtimes(specs)
    cap.tick(states, 1.0, busy_s=0.5)  # not busy, no drops: everyone at its own fps
    assert not cap.degraded and [st.stream.gate.fps for st in states] == [40, 40]
    for st in states:
        st.rates = {"infer_fps": 30.0}  # what was inferred: the model says ~0.5 s of work
    for _ in range(10):  # ... but the inference thread never rested: overloaded, 10 s long
        cap.tick(states, 1.0, busy_s=1.0)
    assert cap.scale > 1.0  # measurement corrects the model
    assert cap.degraded
    vip, low = (st.stream.gate.fps for st in states)
    assert vip == 40 and 2 <= low < 40
    assert cap.effective_fps(states[1]) == low
    cap.model.observe_batch(1, 1.0)  # the scene got cheap: everything fits again
    cap.model.observe_batch(8, 1.0)
    for _ in range(200):
        cap.model.observe_batch(1, 1.0)
        cap.model.observe_batch(8, 2.0)
    cap.tick(states, 1.0, busy_s=0.3)
    assert not cap.degraded and [st.stream.gate.fps for st in states] == [40, 40]


def test_a_rate_gate_follows_its_new_fps() -> None:
    gate = RateGate(10.0)
    admitted = sum(gate.admit(i / 30) for i in range(300))
    gate.set_fps(5.0)
    later = sum(gate.admit(10 + i / 30) for i in range(300))
    assert admitted == 100 and later == 50 and gate.fps == 5.0


def test_the_server_refuses_what_does_not_fit_and_reports_capacity(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(SAMPLE_CLIP, media / "cam.mp4")
    config = {
        "server": {"media_root": str(media)},
        "tracker": {"embedder": "histogram"},
        # no calibration: costs are the priors until frames run, so the answer is fixed
        "capacity": {"calibrate": False, "cpus": 2.0},
    }
    with serve(config, tmp_path) as srv:
        status, report = srv.request("GET", "/api/capacity?width=640&height=480&fps=10")
        assert status == 200 and report["streams"] == 0 and report["more_streams"] >= 1
        assert report["costs"]["detect_ms_per_image"]
        body = {"id": "greedy", "url": "cam.mp4", "fps": 240}
        status, reply = srv.request("POST", "/api/streams", body)
        assert status == 409 and "would overload" in reply["detail"]
        gated = {**body, "min_fps": 2, "motion": {"enabled": True}}
        status, reply = srv.request("POST", "/api/streams", gated)
        assert status == 201 and 2 <= reply["target_fps"] < 240, reply
        assert reply["effective_fps"] == reply["target_fps"] and reply["motion"] is True
        status, motion = srv.request("GET", "/api/streams/greedy/motion")
        assert status == 200 and motion["enabled"] is True
        assert srv.request("GET", "/api/streams/nobody/motion")[0] == 404
        status, text = srv.request("GET", "/metrics")
        assert status == 200
        for name in (
            "vigil_capacity_more_streams",
            'vigil_stream_effective_fps{stream="greedy"}',
            "vigil_capacity_budget_ms_per_second",
            "vigil_stream_detector_frames_total",
        ):
            assert name in str(text), name
