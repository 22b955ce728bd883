"""Server-sent events from the upstream to the client, chunk by chunk.

Only an incomplete last line is held back (an event is never split mid-JSON), and at most MAX_LINE_BYTES of it:
an upstream that never ends its line gets an error event, not the gateway's memory. Each `data:` event has its
`model` renamed to the pool model and its `usage`, if any, noted. A client that disconnects cancels the relay
at once, which closes the upstream connection: the upstream stops generating for nobody.

A stream is complete only once the upstream said so: `data: [DONE]`, a choice with a `finish_reason`, or an
error event of its own. One that closes cleanly before any of them (a proxy's idle cut, a crashed worker
behind a load balancer) ends in an error event for the client, who would otherwise take a cut answer for a
whole one (the openai clients end such a stream silently).
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

import aiohttp

from gateway.jsonwire import to_bytes

_DATA = b"data:"
# The longest incomplete line held back. A chunk event is a few hundred bytes; 1 MiB allows a whole answer in one.
MAX_LINE_BYTES = 1024 * 1024


class EventTooLarge(ValueError):
    """The upstream sent more than MAX_LINE_BYTES without ending its line."""


class EventRewriter:
    def __init__(self, model: str):
        self.model = model
        self.usage: dict | None = None
        self.ended = False                  # the upstream marked its stream's end (module docstring)
        self._held: list[bytes] = []        # the incomplete last line, in pieces: joined once, when it ends
        self._held_bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines so far, rewritten. EventTooLarge once the held line passes MAX_LINE_BYTES; where
        the chunk also ended lines, they are returned first and the next call raises."""
        self._check()
        cut = chunk.rfind(b"\n") + 1       # only the new chunk is searched: a long line costs linear time
        if not cut:
            self._hold(chunk)
            self._check()
            return b""
        data = b"".join([*self._held, chunk[:cut - 1]])
        self._held, self._held_bytes = [], 0
        self._hold(chunk[cut:])
        return b"\n".join(self._line(line) for line in data.split(b"\n")) + b"\n"

    def flush(self) -> bytes:
        self._check()
        tail = b"".join(self._held)
        self._held, self._held_bytes = [], 0
        return self._line(tail) if tail else b""

    def _hold(self, piece: bytes) -> None:
        if piece:
            self._held.append(piece)
            self._held_bytes += len(piece)

    def _check(self) -> None:
        if self._held_bytes > MAX_LINE_BYTES:
            raise EventTooLarge(f"the upstream sent over {MAX_LINE_BYTES} bytes without ending a line")

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(_DATA):
            return line
        payload = line[len(_DATA):].strip()
        if not payload.startswith(b"{"):             # "[DONE]" and anything else pass as they are
            self.ended = self.ended or payload == b"[DONE]"
            return line
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):        # not JSON, or nested past Python's limit: as it came
            return line
        if not isinstance(event, dict):
            return line
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if not self.ended:
            choices = event.get("choices")
            self.ended = "error" in event or (isinstance(choices, list) and any(
                isinstance(c, dict) and c.get("finish_reason") for c in choices))
        if "model" in event:
            event["model"] = self.model
        return b"data: " + to_bytes(event)


def error_event(message: str, code: str) -> bytes:
    """An error the openai clients raise as APIError when it arrives inside a stream. It follows whole lines
    only (the relay drops a cut one), and its first newline ends an event the upstream left open by one: a
    blank line more where the event was ended already, which SSE ignores."""
    body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return b"\ndata: " + json.dumps(body).encode("utf-8") + b"\n\n"


class RelayResponse:
    """An ASGI response that relays `response`'s body through `rewriter`, then calls `done(outcome)`:
    "complete", "broken" (the upstream failed mid-stream), "truncated" (it closed the stream cleanly before
    its end), "relay_failed" (the gateway did) or "disconnected" (the client left)."""

    def __init__(self, response: aiohttp.ClientResponse, rewriter: EventRewriter, status: int, headers: dict[str, str],
                 done: Callable[[str], Awaitable[None]]):
        self._response = response
        self._rewriter = rewriter
        self._status = status
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self._done = done
        self.failure: str | None = None     # the exception's type name, where the outcome is "relay_failed"

    async def __call__(self, scope, receive, send) -> None:
        outcome = "disconnected"
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            finished, _ = await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
            if pump in finished:
                outcome = pump.result()
        except OSError:                    # the client's socket went away under a send
            outcome = "disconnected"
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            # close, not release: a stream cut short must not go back to the pool, and closing is what tells
            # the upstream to stop generating.
            self._response.close()
            await self._done(outcome)

    async def _pump(self, send) -> str:
        await send({"type": "http.response.start", "status": self._status, "headers": self._headers})
        outcome = "complete"
        try:
            async for chunk in self._response.content.iter_any():
                out = self._rewriter.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = self._rewriter.flush()
            if tail and self._rewriter.ended:   # else the line was cut: half an event is no use to a client
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            if not self._rewriter.ended:
                outcome = "truncated"
                await send({"type": "http.response.body", "more_body": True,
                            "body": error_event("the upstream closed its stream before its end ([DONE] or a "
                                                "finish_reason)", "upstream_truncated")})
        except asyncio.TimeoutError:        # aiohttp's sock_read timeout is one
            outcome = "broken"
            await send({"type": "http.response.body", "more_body": True,
                        "body": error_event("the upstream stopped sending mid-stream (timeout)", "upstream_timeout")})
        except aiohttp.ClientError as e:
            outcome = "broken"
            await send({"type": "http.response.body", "more_body": True,
                        "body": error_event(f"the upstream broke off mid-stream ({type(e).__name__})",
                                            "upstream_broken")})
        except EventTooLarge as e:
            outcome = "broken"
            await send({"type": "http.response.body", "more_body": True,
                        "body": error_event(str(e), "upstream_answer_too_large")})
        except OSError:                     # the client's socket, under a send: nobody to tell
            raise
        except Exception as e:              # noqa: BLE001 - the client still gets a well-formed end
            outcome = "relay_failed"
            self.failure = type(e).__name__
            await send({"type": "http.response.body", "more_body": True,
                        "body": error_event(f"the gateway could not relay the upstream's stream ({type(e).__name__})",
                                            "relay_failed")})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome


async def _wait_for_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
