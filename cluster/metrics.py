"""Prometheus metrics of the scale-out roles, registered next to the server's own metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.redis_up = Gauge("vigil_redis_up", "1 while Redis answers", registry=r)
        self.streams = Gauge(
            "vigil_worker_streams", "Cameras this worker owns (holds a lease for)", registry=r
        )
        self.capacity = Gauge(
            "vigil_worker_capacity", "The most cameras this worker admits", registry=r
        )
        self.load = Gauge(
            "vigil_worker_load",
            "Cameras owned over admission capacity (0..1): the autoscaling signal",
            registry=r,
        )
        self.buffered = Gauge(
            "vigil_worker_buffered_entries", "Entries waiting to be written to Redis", registry=r
        )
        self.written = Counter(
            "vigil_worker_entries_written_total", "Entries appended to Redis Streams", registry=r
        )
        self.dropped = Counter(
            "vigil_worker_entries_dropped_total",
            "Entries dropped: the buffer was full (Redis away) or the camera was no longer owned",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            "vigil_worker_writes_rejected_total",
            "Entries refused by the fencing check (the lease was no longer this worker's)",
            registry=r,
        )
        self.claims = Counter("vigil_worker_claims_total", "Leases claimed", registry=r)
        self.lost = Counter(
            "vigil_worker_leases_lost_total", "Leases found taken by another worker", registry=r
        )
        self.released = Counter(
            "vigil_worker_leases_released_total", "Leases handed back", ["reason"], registry=r
        )
        self.redis_errors = Counter(
            "vigil_redis_errors_total", "Redis round trips that failed", ["role"], registry=r
        )
        self.rule_changes = Counter(
            "vigil_worker_rule_changes_total",
            "Changes of a camera's lines and zones applied live (without a restart)",
            registry=r,
        )
        self.resets = Counter(
            "vigil_worker_counts_resets_total", "Counts resets carried out", registry=r
        )


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.redis_up = Gauge("vigil_redis_up", "1 while Redis answers", registry=r)
        self.entries = Counter(
            "vigil_gateway_entries_read_total", "Entries read from Redis", ["kind"], registry=r
        )
        self.gaps = Counter(
            "vigil_gateway_seq_gap_messages_total",
            "Messages missing in a camera's seq (failover, overload or a full worker buffer)",
            ["stream"],
            registry=r,
        )
        self.stale = Counter(
            "vigil_gateway_stale_entries_total",
            "Entries skipped: a seq already delivered or an older fencing token",
            registry=r,
        )
        self.streams = Gauge("vigil_gateway_streams", "Cameras in the desired state", registry=r)
        self.owned = Gauge(
            "vigil_gateway_streams_owned", "Cameras a live worker holds a lease for", registry=r
        )
        self.workers = Gauge("vigil_gateway_workers", "Workers with a recent heartbeat", registry=r)
        self.events_stored = Counter(
            "vigil_gateway_events_stored_total",
            "Events taken from the consumer group and acknowledged",
            registry=r,
        )
        self.redis_errors = Counter(
            "vigil_redis_errors_total", "Redis round trips that failed", ["role"], registry=r
        )
