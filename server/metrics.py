"""Prometheus metrics, one registry per app (several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vitserve_requests", "requests by route (HTTP path or gRPC method) and status (HTTP "
                                "status or gRPC code name)", ["route", "status"], registry=r)
        self.queue_depth = Gauge("vitserve_queue_depth", "images waiting for a batch", registry=r)
        self.batches_computing = Gauge("vitserve_batches_computing", "batches in the backend now (at most "
                                       "--batches-in-flight: at that limit all the time, the backend is the "
                                       "bottleneck)", registry=r)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram("vitserve_batch_size", "images per executed batch",
                                    buckets=[s for s in sizes if s <= max_batch_size], registry=r)
        self.decode_seconds = Histogram("vitserve_decode_seconds", "image decode + preprocess time per request",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("vitserve_queue_wait_seconds", "time an image waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("vitserve_inference_seconds", "backend time per batch",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.proof = Gauge("vitserve_proof", "1 for the state of the artifact's proof re-run at load: passed, "
                           "failed (not served; or served with --allow-drift) or none (an artifact without one)",
                           ["state"], registry=r)
        self.total_seconds = Histogram("vitserve_request_seconds", "request time by route", ["route"],
                                       buckets=LATENCY_BUCKETS, registry=r)
