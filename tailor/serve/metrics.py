"""The server's Prometheus metrics (``GET /metrics``): requests by route and status, latency, batch sizes and
the queue, each server with a registry of its own (two apps in one test process never share counters)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tailor_requests", "HTTP requests answered, by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("tailor_request_seconds", "Time to answer a request, by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch_size = Histogram("tailor_batch_images", "Images per forward pass, by model", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.compute = Histogram("tailor_batch_seconds", "Time of one forward pass on the model thread, by model",
                                 ["model"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.queue = Gauge("tailor_queue_images", "Images waiting or being computed, by model", ["model"],
                           registry=self.registry)
        self.rejected = Counter("tailor_overload_rejections", "Requests refused with 503 because the queue was full",
                                ["model"], registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.compute.labels(model).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
