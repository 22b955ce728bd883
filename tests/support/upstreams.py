"""What the gateway tests run against: fake upstream LLMs (real HTTP servers on free loopback ports that speak
the chat-completions shape, SSE and `usage` included, and record what they receive) and an event loop in a
thread for the selector and the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selector.pool import Pool

COMPLETION_TOKENS = 5


def prompt_tokens(body: dict) -> int:
    """The fake's token count: whitespace-separated words of every string content."""
    return sum(len(m["content"].split()) for m in body.get("messages", []) if isinstance(m.get("content"), str))


class FakeUpstream:
    """One OpenAI-compatible upstream. `mode`: "ok", "status_500", "status_400", "status_401" (its error quotes
    a masked key, as OpenAI's does), "nested_500" (a 500 whose body is 60,000 "["), "slow" (sleeps `delay_s`
    before its headers, and sets `disconnected` instead if the gateway closed meanwhile), "break_mid_stream"
    (one chunk, then the connection drops), "end_without_done" (one chunk, then a clean end of the body: no
    finish_reason, no [DONE]), "finish_without_done" (the whole answer with its finish_reason, no [DONE]),
    "endless_stream" (a chunk every 50 ms until the client goes away,
    then `disconnected` is set), "endless_line" (a stream whose first line never ends, sent until the client
    goes away), and answers that are well-formed but odd: "lone_surrogate" (an escaped "\\ud800" in the
    text), "utf8_header" (an x-request-id header of UTF-8 bytes), "huge_usage" (a prompt_tokens of 401
    digits), "gzip" (gzip-compressed although the gateway asks for identity). `stop()` closes the port (connections refused) and `start()` opens it again."""

    def __init__(self, name: str):
        self.name = name
        self.mode = "ok"
        self.delay_s = 0.0
        self.received: list[dict] = []       # {"path", "headers", "body"}
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):      # quiet
                pass

            def setup(self):
                super().setup()
                with upstream._lock:
                    upstream._connections.add(self.connection)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with upstream._lock:
                    upstream.received.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                try:
                    upstream.handle(self, body)
                except OSError:                # the gateway gave up on a slow answer and closed
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """Down for real: the port refuses connections and the open keep-alive connections are cut."""
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
        self.mode, self.delay_s = "ok", 0.0
        self.disconnected.clear()

    # --- answers ---------------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        mode = self.mode
        if mode == "slow":
            time.sleep(self.delay_s)
            if _peer_closed(h.connection):   # the gateway gave up and closed: nobody to answer
                self.disconnected.set()
                return
        if mode == "nested_500":             # an error body no JSON parser should be trusted to read
            data = b"[" * 60_000
            h.send_response(500)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            h.end_headers()
            return h.wfile.write(data)
        if mode in ("status_500", "status_400", "status_401"):
            status = int(mode[-3:])
            message = f"{self.name} says {status}"
            if status == 401:
                message += ": incorrect API key provided: sk-up***-key"
            return self._json(h, status, {"error": {"message": message, "type": "fake", "param": None,
                                                    "code": f"fake_{status}"}})
        usage = {"prompt_tokens": 10 ** 400 if mode == "huge_usage" else prompt_tokens(body),
                 "completion_tokens": COMPLETION_TOKENS, "total_tokens": prompt_tokens(body) + COMPLETION_TOKENS}
        model = body.get("model")
        # json.dumps escapes it as \ud800, as a server of another language might send it
        text = "answer \ud800 half a pair" if mode == "lone_surrogate" else "answer"
        headers = {"x-request-id": "\u20ac-1".encode().decode("latin-1")} if mode == "utf8_header" else {}
        if not body.get("stream"):
            return self._json(h, 200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{text} from {self.name}"},
                             "finish_reason": "stop"}], "usage": usage}, headers)
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()

        def event(delta: dict | None, *, finish=None, with_usage=False) -> bytes:
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                     "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if with_usage:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        def send(data: bytes) -> None:
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        try:
            if mode == "endless_line":
                send(b'data: {"id": "')
                for _ in range(256):           # 16 MiB at most, if nobody stops it
                    send(b"x" * 65536)
                return
            send(event({"role": "assistant", "content": text}))
            if mode == "break_mid_stream":
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            if mode in ("end_mid_line", "end_after_one_lf"):    # closed cleanly inside a line, or an event
                cut = b'data: {"id": "chatcmpl-fake", "obj' if mode == "end_mid_line" else None
                send(cut or event({"content": " more"})[:-1])
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
                return
            if mode == "end_without_done":
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
                return
            if mode == "endless_stream":
                while True:
                    time.sleep(0.05)
                    send(event({"content": " more"}))
            for word in (" from", f" {self.name}"):
                send(event({"content": word}))
            send(event({}, finish="stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                send(event(None, with_usage=True))
            if mode != "finish_without_done":
                send(b"data: [DONE]\n\n")
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except OSError:                       # the gateway closed the connection
            self.disconnected.set()
        h.close_connection = True

    def _json(self, h: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        if self.mode == "gzip":
            data, headers = gzip.compress(data), {**(headers or {}), "content-encoding": "gzip"}
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)      # latin-1 on the wire: a str made of UTF-8 bytes sends those bytes
        h.end_headers()
        h.wfile.write(data)


def _peer_closed(connection: socket.socket) -> bool:
    connection.setblocking(False)
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:          # open, nothing sent: still waiting for us
        return False
    except OSError:
        return True
    finally:
        connection.setblocking(True)


class LoopThread:
    """An asyncio event loop in a daemon thread: the selector and the gateway run on it as in `routoo serve`."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def pool_with_upstreams(pool: Pool, upstreams: dict[str, FakeUpstream]) -> Pool:
    """`pool` with each model that has a FakeUpstream pointed at it (its own name upstream, no key)."""
    return Pool(tuple(dataclasses.replace(m, base_url=upstreams[m.name].base_url) if m.name in upstreams else m
                      for m in pool.models))
