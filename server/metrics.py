"""Prometheus metrics, one registry per app (several apps in one process stay apart). Everything a model does is
labelled with its model and version; requests are counted by route and status, and by the model they reached
(empty labels for requests that reached none: health checks, errors before a model was chosen)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MODEL = ["model", "version"]


@dataclass
class ModelMetrics:
    """One model version's series (the children of Metrics' labelled metrics)."""

    queue_depth: Gauge
    batches_computing: Gauge
    batch_size: Histogram
    decode_seconds: Histogram
    queue_seconds: Histogram
    inference_seconds: Histogram
    proof: Gauge  # vitserve_proof itself: its state label is set once the proof has run
    labels: tuple[str, str]  # model, version

    def set_proof(self, state: str) -> None:
        self.proof.labels(*self.labels, state).set(1)


class Metrics:
    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vitserve_requests", "requests by route (HTTP path or gRPC method), status (HTTP "
                                "status or gRPC code name) and the model and version they reached", ["route", "status",
                                                                                                    *MODEL], registry=r)
        self.queue_depth = Gauge("vitserve_queue_depth", "images waiting for a batch", MODEL, registry=r)
        self.batches_computing = Gauge("vitserve_batches_computing", "batches in the backend now (at most "
                                       "--batches-in-flight: at that limit all the time, the backend is the "
                                       "bottleneck)", MODEL, registry=r)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram("vitserve_batch_size", "images per executed batch", MODEL,
                                    buckets=[s for s in sizes if s <= max_batch_size], registry=r)
        self.decode_seconds = Histogram("vitserve_decode_seconds", "image decode + preprocess time per request",
                                        MODEL, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("vitserve_queue_wait_seconds", "time an image waited for its batch", MODEL,
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("vitserve_inference_seconds", "backend time per batch", MODEL,
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.proof = Gauge("vitserve_proof", "1 for the state of the artifact's proof re-run at load: passed, "
                           "failed (not served; or served with --allow-drift) or none (an artifact without one)",
                           [*MODEL, "state"], registry=r)
        self.total_seconds = Histogram("vitserve_request_seconds", "request time by route", ["route"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self._per_model = (self.queue_depth, self.batches_computing, self.batch_size, self.decode_seconds,
                           self.queue_seconds, self.inference_seconds)

    def for_model(self, model: str, version: str) -> ModelMetrics:
        series = [m.labels(model, version) for m in self._per_model]
        return ModelMetrics(*series, proof=self.proof, labels=(model, version))

    def forget(self, model: str, version: str) -> None:
        """Drops an unloaded version's series (the request counts stay: they are history)."""
        for metric in self._per_model:
            metric.remove(model, version)
        for state in ("passed", "failed", "none"):
            try:
                self.proof.remove(model, version, state)
            except KeyError:
                pass
