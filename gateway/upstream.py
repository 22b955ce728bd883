"""The pool's upstreams and the forwarding of one chat completion to them, with the runner-up retry.

An attempt fails over to the next candidate only before the upstream's first byte: when it cannot be
reached, answers 5xx, refuses the gateway's own key for it (401 or 403: the client's key was fine, so
passing that on would make the client's library blame its key; the body, which may quote the key, is
dropped), or sends nothing within the timeout. Once an answer has started, it is the answer: another 4xx
passes through to the client as it is, and a stream that breaks ends with an error event.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import aiohttp

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.jsonwire import to_bytes
from gateway.metrics import GatewayMetrics
from selector.pool import Pool

# What an upstream's error body may cost us to read (it is passed on or summarised, never streamed).
MAX_ERROR_BODY_BYTES = 64 * 1024
# A non-streamed answer is read whole to name its model and count its usage: 16 MiB is ~4M tokens of text.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


_MAX_TOKENS = 2 ** 53
_KEY_REFUSED = (401, 403)


class UpstreamConfigError(ValueError):
    """An upstream that cannot be used: its key's environment variable is unset."""


@dataclass(frozen=True)
class Upstream:
    model: str                      # the pool name
    url: str                        # base_url + /chat/completions
    upstream_model: str             # the name the upstream expects
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    headers: dict[str, str] = field(repr=False, default_factory=dict)   # Authorization with its key; not in reprs

    def cost_usd(self, usage: dict) -> float | None:
        """The answer's cost at pool prices; None where `usage` has no plausible token counts (negative, not
        integers, or past 2**53, where a float no longer counts them), so accounting never fails an answer."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        counts = (prompt, completion)
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < _MAX_TOKENS for n in counts):
            return None
        return (prompt * self.input_usd_per_mtok + completion * self.output_usd_per_mtok) / 1e6


def header_key(value: str) -> str | None:
    """A key from the environment as it goes into a header: the whitespace at its ends dropped (a secret
    made from a file, or a .env with CRLF line ends, carries a newline), None if what is left is empty or
    holds a character other than printable ASCII. aiohttp refused such a key on every request: a 500 with
    no failover; as a client key it locked every client out."""
    key = value.strip()
    return key if key and all(" " <= c <= "~" for c in key) else None


def load_upstreams(pool: Pool, environ=os.environ) -> dict[str, Upstream]:
    """Every pool model with a base_url, keys read from the environment once, at start-up."""
    upstreams = {}
    for m in pool.models:
        if m.base_url is None:
            continue
        headers = {}
        if m.api_key_env is not None:
            key = environ.get(m.api_key_env)
            if not key:
                raise UpstreamConfigError(f"pool model {m.name!r}: its api_key_env {m.api_key_env!r} is not set in "
                                          f"the environment (export it before starting the gateway)")
            key = header_key(key)
            if key is None:                 # the variable is named, never its value
                raise UpstreamConfigError(f"pool model {m.name!r}: the value of {m.api_key_env!r} holds a "
                                          f"character an HTTP header cannot carry (a control character, or "
                                          f"one that is not ASCII) besides the whitespace at its ends")
            headers["authorization"] = f"Bearer {key}"
        upstreams[m.name] = Upstream(m.name, m.base_url.rstrip("/") + "/chat/completions",
                                     m.upstream_model or m.name, m.input_usd_per_mtok, m.output_usd_per_mtok,
                                     headers)
    return upstreams


# Errors of an upstream call: aiohttp's own, and a timeout (sock_read) in either of its forms.
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


@dataclass
class Answer:
    """The upstream response that will answer the client: headers in, body not yet read."""
    upstream: Upstream
    response: aiohttp.ClientResponse
    attempts: int
    started: float                 # perf_counter at the attempt's start


class Forwarder:
    """Sends chat completions to the upstreams over aiohttp's client. Against the same instant upstream on
    these 2 busy cores, aiohttp sent 650-1,750 requests/s with 1 client and 1,650-2,900 with 32, httpx 0.28
    126-242 and 119-178: the client was most of the gateway's overhead (bench/gateway_overhead.py measures
    both: `direct` and `direct_httpx`)."""

    def __init__(self, config: GatewayConfig, upstreams: dict[str, Upstream], metrics: GatewayMetrics):
        self._config = config
        self._upstreams = upstreams
        self._metrics = metrics
        # sock_read bounds every wait for the upstream's bytes: its headers (the first byte) and each next chunk.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=config.upstream_connect_timeout_s,
                                          sock_read=config.upstream_timeout_s),
            # identity is asked for; an upstream that compresses anyway is decompressed here, since the answer
            # is passed on without its content-encoding (and its usage must be readable).
            auto_decompress=True,
            trust_env=False,               # no proxy or netrc from the environment
            skip_auto_headers=("User-Agent",))

    async def open(self, candidates: list[str], body: dict, *, stream: bool) -> Answer:
        """Tries the candidates in order (at most max_attempts); the first that answers below 500 wins."""
        failures: list[tuple[str, str, str]] = []      # (model, kind, detail)
        tried = [m for m in candidates if m in self._upstreams][:self._config.max_attempts]
        for attempt, name in enumerate(tried, start=1):
            upstream = self._upstreams[name]
            payload = to_bytes({**body, "model": upstream.upstream_model})
            headers = {**upstream.headers, "content-type": "application/json", "accept-encoding": "identity",
                       "accept": "text/event-stream" if stream else "application/json"}
            started = time.perf_counter()
            try:
                response = await self.session.post(upstream.url, data=payload, headers=headers,
                                                   allow_redirects=False)
            except (aiohttp.ConnectionTimeoutError, asyncio.TimeoutError) as e:
                kind = "connect_timeout" if isinstance(e, aiohttp.ConnectionTimeoutError) else "timeout"
                failures.append((name, kind, f"no answer within {self._timeout_of(kind):g} s"))
            except aiohttp.ClientError as e:
                failures.append((name, "unreachable", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__))
            else:
                self._metrics.upstream_ttfb_seconds.labels(name).observe(time.perf_counter() - started)
                if response.status in _KEY_REFUSED:
                    response.close()
                    failures.append((name, "key_refused", f"HTTP {response.status}: it refused the gateway's key "
                                                          f"or its access to the model (api_key_env in the pool "
                                                          f"file)"))
                elif response.status < 500:
                    return Answer(upstream, response, attempt, started)
                else:
                    detail = await _error_summary(response)
                    failures.append((name, "status_5xx", f"HTTP {response.status}{detail}"))
            self._metrics.upstream_failures.labels(name, failures[-1][1]).inc()
        if not tried:
            raise GatewayError(503, f"none of the models {candidates} has an upstream (base_url in the pool file)",
                               type="service_unavailable", code="upstream_not_configured")
        kinds = {kind for _, kind, _ in failures}
        timeouts = kinds <= {"timeout", "connect_timeout"}
        code = ("upstream_timeout" if timeouts else "upstream_key_refused" if kinds == {"key_refused"}
                else "upstream_failed")
        summary = "; ".join(f"{model}: {detail}" for model, _, detail in failures)
        raise GatewayError(504 if timeouts else 502, f"no upstream answered after {len(failures)} attempt(s): {summary}",
                           type="upstream_error", code=code)

    def _timeout_of(self, kind: str) -> float:
        return self._config.upstream_connect_timeout_s if kind == "connect_timeout" else self._config.upstream_timeout_s

    async def close(self) -> None:
        await self.session.close()


async def _error_summary(response: aiohttp.ClientResponse) -> str:
    """A short, key-free description of an upstream's error body, and the connection released."""
    try:
        data = await read_limited(response, MAX_ERROR_BODY_BYTES)
    except (GatewayError, *UPSTREAM_ERRORS):
        data = b""
    finally:
        response.close()
    try:
        message = json.loads(data)["error"]["message"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return ""
    return f" ({str(message)[:200]})" if message else ""


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    async for chunk in response.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise GatewayError(502, f"the upstream's answer is over {limit} bytes", type="upstream_error",
                               code="upstream_answer_too_large")
    return bytes(data)
