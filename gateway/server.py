"""Running the gateway: uvicorn on the caller's event loop (GatewayServer, used by `routoo serve` beside the
selector and by the tests), or alone until SIGINT/SIGTERM (`routoo gateway`, `python -m gateway`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import uvicorn

from gateway.app import Gateway
from gateway.config import GatewayConfig
from selector.log_limits import AggregatedRecords

log = logging.getLogger("routoo.gateway")


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # The owner of the event loop (routoo serve, a test) handles signals and calls stop().
        yield


class GatewayServer:
    """The gateway under uvicorn, started and stopped on the running event loop."""

    def __init__(self, config: GatewayConfig, environ=os.environ, *, embedded: bool = True):
        self.config = config
        self.gateway = Gateway(config, environ)    # pool and upstreams checked before anything binds
        if config.api_key_env is None and config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("the gateway listens on %s without --api-key-env: anyone who reaches it spends the "
                        "upstreams' keys", config.host)
        # uvicorn's defaults minus its access log (bounded logs: one line per request is unbounded) and
        # with the asyncio loop (grpc.aio supports no other).
        uv_config = uvicorn.Config(self.gateway.app(), host=config.host, port=config.port, loop="asyncio",
                                   log_level="warning", access_log=False, lifespan="on",
                                   timeout_graceful_shutdown=config.grace_s, server_header=False)
        self._server = (_EmbeddedUvicorn if embedded else uvicorn.Server)(uv_config)
        # After uvicorn.Config, which configures its loggers: uvicorn.error's warnings through the gateway's
        # own bounded log (a line per kind per 10 s) while this server runs.
        self._bounded_uvicorn = AggregatedRecords(self.gateway.log)
        self._task: asyncio.Task | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Binds and starts serving; returns the bound port (config.port 0 = any free one). The socket is bound
        here, so a port in use is an OSError naming it (uvicorn's own bind would exit the process)."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says
        # TCP, and without it Nagle and delayed ACKs added ~44 ms to every keep-alive request (measured here).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.config.port))
        except OSError as e:
            sock.close()
            raise OSError(f"the gateway cannot bind {self.config.host}:{self.config.port}: {e.strerror}") from e
        logging.getLogger("uvicorn.error").addFilter(self._bounded_uvicorn)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()                     # raises what stopped it
                raise RuntimeError(f"the gateway did not start on {self.config.host}:{self.config.port}")
            await asyncio.sleep(0.02)
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        logging.getLogger("uvicorn.error").removeFilter(self._bounded_uvicorn)

    async def wait(self) -> None:
        await self._task


async def serve(config: GatewayConfig) -> None:
    """Runs the gateway alone until SIGINT/SIGTERM (uvicorn's own signal handling)."""
    server = GatewayServer(config, embedded=False)
    port = await server.start()
    print(f"gateway ready at http://{config.host}:{port}/v1 (selector {config.selector_address}, "
          f"{len(server.gateway.upstreams)} upstreams); Ctrl-C stops it", flush=True)
    await server.wait()


async def serve_beside_selector(serve_selector, gateway: GatewayServer) -> None:
    """`routoo serve`: the gateway on the selector's event loop. It starts first, so that a port in use fails
    at once (OSError); until the selector is up it answers 503. `serve_selector()` (selector.server.serve
    with its arguments bound) returns on SIGINT/SIGTERM once the selector has stopped; the gateway stops then."""
    port = await gateway.start()
    print(f"gateway ready at http://{gateway.config.host}:{port}/v1 (OpenAI-compatible, model \"routoo\"; selector "
          f"{gateway.config.selector_address})", flush=True)
    try:
        await serve_selector()
    finally:
        await gateway.stop()
