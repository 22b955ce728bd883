"""Prometheus metrics of one selector server, in a registry of its own (several servers share a process in
tests and the demo, and the default global registry would make them collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Route takes ~1-2 ms end to end on 2 cores; RouteBatch over 10k prompts takes seconds. Buckets span both.
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Coalesced calls carry 1 to max_rows (64, the model's max_batch_size) prompts; waits are a call's length.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_WAIT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1)


class SelectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "routoo_selector_request_seconds", "Time to answer one selector RPC", ["method"],
            buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.triton_seconds = Histogram(
            "routoo_selector_triton_call_seconds", "Time of the predictor call within an RPC", ["method"],
            buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.decisions = Counter(
            "routoo_selector_decisions", "Prompts routed to each model", ["model"], registry=self.registry)
        self.errors = Counter(
            "routoo_selector_errors", "RPCs answered with an error, by status code", ["method", "code"],
            registry=self.registry)
        self.rejected = Counter(
            "routoo_selector_rejected", "Requests refused before any work: undecodable, bytes_in_flight, "
            "over_budget (also counted in routoo_selector_errors)", ["method", "reason"], registry=self.registry)
        self.cancelled = Counter(
            "routoo_selector_cancelled", "RPCs the caller cancelled (or whose deadline passed) mid-call",
            ["method"], registry=self.registry)
        self.log_lines_suppressed = Counter(
            "routoo_selector_log_lines_suppressed", "Repeated warnings counted instead of written",
            registry=self.registry)
        self.in_flight_bytes = Gauge(
            "routoo_selector_request_bytes_in_flight", "Wire bytes of big requests being held now",
            registry=self.registry)
        self.in_flight = Gauge(
            "routoo_selector_requests_in_flight", "RPCs being handled now", registry=self.registry)
        self.stream_messages_in_flight = Gauge(
            "routoo_selector_stream_messages_in_flight", "RouteStream messages being decided now, over all streams",
            registry=self.registry)
        self.predictor_ready = Gauge(
            "routoo_selector_predictor_ready", "1 while the predictor answers its readiness check",
            registry=self.registry)

        self.coalesced_rows = Histogram(
            "routoo_selector_coalesced_rows", "Prompts per coalesced predictor call", buckets=_BATCH_BUCKETS,
            registry=self.registry)
        self.coalesced_requests = Histogram(
            "routoo_selector_coalesced_requests", "Requests sharing one coalesced predictor call",
            buckets=_BATCH_BUCKETS, registry=self.registry)
        self.queue_wait_seconds = Histogram(
            "routoo_selector_queue_wait_seconds", "Time a request waited for a predictor call slot",
            buckets=_WAIT_BUCKETS_S, registry=self.registry)

    def observe_batch(self, requests: int, rows: int) -> None:
        self.coalesced_requests.observe(requests)
        self.coalesced_rows.observe(rows)

    def serve_http(self, host: str, port: int):
        """Starts /metrics on host:port (0 = any free port); returns (http server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)
