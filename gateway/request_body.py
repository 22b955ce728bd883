"""The client's side of one request: its JSON body, read within the gateway's limits (size, time, UTF-8, depth,
lone surrogates), and whether the client is still there while its answer is prepared."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import Response

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.jsonwire import has_lone_surrogate


async def read_json(request: Request, config: GatewayConfig) -> dict:
    """The body as a JSON object, or a GatewayError naming what is wrong with it (413, 408, 400)."""
    limit = config.max_body_bytes
    too_large = GatewayError(413, f"the request body is over the gateway's limit of {limit} bytes",
                             code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    data = bytearray()
    try:
        async with asyncio.timeout(config.body_timeout_s):    # a trickling client holds its slot no longer
            async for chunk in request.stream():
                data += chunk
                if len(data) > limit:
                    raise too_large
    except TimeoutError as e:
        raise GatewayError(408, f"the request body did not arrive within {config.body_timeout_s:g} s",
                           code="request_timeout", headers={"connection": "close"}) from e
    try:
        # Decoded strictly first: json.loads(bytes) lets UTF-8-encoded surrogates through (surrogatepass).
        body = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 ({e.reason} at byte {e.start})",
                          code="invalid_json") from e
    except ValueError as e:           # the decoder's message gives a position, never the text
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from e
    except RecursionError as e:
        raise bad_request("the request body is nested too deeply to parse", code="invalid_json") from e
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}",
                          code="invalid_json")
    if has_lone_surrogate(body, data):
        raise bad_request("the request body has a lone UTF-16 surrogate escape (such as \\ud800 with no pair) in "
                          "a string: that is not text; pair it or remove it", code="invalid_json")
    return body


async def unless_client_leaves(request: Request, work) -> Response | None:
    """`work`'s response, or None (and `work` cancelled) if the client disconnects first. A non-streamed answer
    takes the upstream's whole generation before its first byte; a client that gave up should not pay for
    it. (Streams skip this: their first byte comes after the prefill, and from then on RelayResponse
    watches. The extra turns of the event loop here made aiohttp drop the chunk before a break: it raises
    a stream's error before the bytes it still holds.)"""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def _client_gone(request: Request) -> None:
    # The body has been read, so the only message left is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
