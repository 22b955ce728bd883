"""The OpenAPI schema the gateway publishes at /openapi.json. The decision-only endpoints take and return the
JSON form of the selector's messages (selector/proto/selector.proto, proto3 JSON mapping, field names as in
the .proto), so their schemas are written from that file."""

from __future__ import annotations

from selector.policies import POLICIES

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
    "code": {"type": ["string", "null"]}}}}}

_CONSTRAINTS = {"type": "object", "properties": {
    "allow": {"type": "array", "items": {"type": "string"}, "description": "only these models"},
    "deny": {"type": "array", "items": {"type": "string"}, "description": "never these models"},
    "max_latency_ms": {"type": "number", "description": "exclude models whose pool-file p95 is above this"},
    "max_cost_usd": {"type": "number", "description": "exclude models expected to cost more than this"}}}

_SCORE = {"type": "object", "properties": {"model": {"type": "string"}, "quality": {"type": "number"},
                                           "expected_cost_usd": {"type": "number"}}}


def _errors(*statuses: int) -> dict:
    return {str(s): {"description": "OpenAI-shaped error",
                     "content": {"application/json": {"schema": _ERROR}}} for s in statuses}


def openapi_schema() -> dict:
    policies = {name: {"type": "object", "properties": {cls.parameter: {"type": "number"}}}
                for name, cls in POLICIES.items()}
    route_request = {"type": "object", "properties": {
        "prompt": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object"},
                     "description": "instead of prompt: a chat, scored under the gateway's prompt rule"},
        **policies, "constraints": _CONSTRAINTS},
        "description": f"set at most one policy of {sorted(POLICIES)}; none = the selector's default"}
    route_decision = {"type": "object", "properties": {
        "model": {"type": "string"}, "quality": {"type": "number"}, "expected_cost_usd": {"type": "number"},
        "policy": {"type": "string"}, "runners_up": {"type": "array", "items": _SCORE},
        "scores": {"type": "array", "items": _SCORE},
        "excluded": {"type": "array", "items": {"type": "object", "properties": {
            "model": {"type": "string"}, "reason": {"type": "string"}}}},
        "fallback": {"type": "boolean"}}}
    score_response = {"type": "object", "properties": {
        "models": {"type": "array", "items": {"type": "string"}},
        "quality": {"type": "array", "items": {"type": "number"},
                    "description": "row-major (n_prompts, n_models)"},
        "expected_cost_usd": {"type": "array", "items": {"type": "number"}}}}

    def body(schema: dict) -> dict:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def ok(schema: dict, description: str) -> dict:
        return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}

    chat = {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string", "description": "'routoo', 'routoo:<policy>=<value>' (e.g. "
                                                   "'routoo:tradeoff=2000') or a pool model name"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"}, "routoo": _CONSTRAINTS}, "additionalProperties": True}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Routoo gateway", "version": "1",
                 "description": "OpenAI-compatible chat completions routed per prompt by Routoo's selector"},
        "paths": {
            "/v1/chat/completions": {"post": {
                "summary": "Route the chat to a pool model and forward it (SSE when stream is true)",
                "requestBody": body(chat),
                "responses": {"200": {"description": "the upstream's answer; headers x-routoo-model, "
                                                     "x-routoo-quality, x-routoo-expected-cost-usd"},
                              **_errors(400, 401, 413, 429, 502, 503, 504)}}},
            "/v1/models": {"get": {"summary": "'routoo' and the pool models that have an upstream",
                                   "responses": ok({"type": "object"}, "model list")}},
            "/v1/routoo/route": {"post": {"summary": "The selector's Route decision, without forwarding",
                                          "requestBody": body(route_request),
                                          "responses": {**ok(route_decision, "RouteDecision"),
                                                        **_errors(400, 401, 413, 429, 503, 504)}}},
            "/v1/routoo/score": {"post": {"summary": "The selector's per-model scores for prompts",
                                          "requestBody": body({"type": "object", "properties": {
                                              "prompts": {"type": "array", "items": {"type": "string"}}}}),
                                          "responses": {**ok(score_response, "ScoreResponse"),
                                                        **_errors(400, 401, 413, 429, 503, 504)}}},
            "/health": {"get": {"summary": "200 while the selector serves, else 503",
                                "responses": ok({"type": "object"}, "health")}},
            "/livez": {"get": {"summary": "200 while the gateway runs, whatever the selector's state (liveness)",
                               "responses": ok({"type": "object"}, "live")}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
    }
