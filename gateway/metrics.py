"""Prometheus metrics of one gateway, in a registry of its own (tests run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Routing takes ~2-5 ms through the selector on 2 cores; upstream answers take from ms (a local echo) to
# minutes (a long generation). Buckets span both.
_ROUTING_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_UPSTREAM_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "routoo_gateway_requests", "Chat completions answered, by the model that answered ('none' when no "
            "model did) and HTTP status", ["model", "status"], registry=self.registry)
        self.routing_seconds = Histogram(
            "routoo_gateway_routing_seconds", "Time of the selector's Route call", buckets=_ROUTING_BUCKETS_S,
            registry=self.registry)
        self.upstream_ttfb_seconds = Histogram(
            "routoo_gateway_upstream_ttfb_seconds", "Upstream time to its response headers", ["model"],
            buckets=_UPSTREAM_BUCKETS_S, registry=self.registry)
        self.upstream_seconds = Histogram(
            "routoo_gateway_upstream_seconds", "Upstream time to the end of its answer", ["model"],
            buckets=_UPSTREAM_BUCKETS_S, registry=self.registry)
        self.upstream_failures = Counter(
            "routoo_gateway_upstream_failures", "Upstream attempts that failed before the first byte "
            "(unreachable, 5xx, key refused, timeout), broke mid-stream or ended a stream early",
            ["model", "reason"], registry=self.registry)
        self.spend_usd = Counter(
            "routoo_gateway_spend_usd", "Realised spend from the upstreams' `usage` at pool-file prices; "
            "routed=false: a pool model asked for by name, or the fallback", ["model", "routed"], registry=self.registry)
        self.best_model_spend_usd = Counter(
            "routoo_gateway_best_model_spend_usd", "What the same routed requests would have cost on the model "
            "of highest predicted quality (the same token counts at its prices)", registry=self.registry)
        self.tokens = Counter(
            "routoo_gateway_tokens", "Tokens reported in `usage`", ["model", "kind"], registry=self.registry)
        self.in_flight = Gauge(
            "routoo_gateway_requests_in_flight", "Chat completions being handled now (streams included)",
            registry=self.registry)
