"""Errors in OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, with their HTTP status, and
the last line of defence for the ones no handler expected (`ContainFailures`)."""

from __future__ import annotations

import traceback
from pathlib import Path

import grpc
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from selector.log_limits import AggregatedLog


class GatewayError(Exception):
    """An answer the client gets instead of a completion; the message names the bad value or the failure."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


# The selector's status codes (selector.proto) as HTTP: (status, type, code).
_FROM_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_routoo_request"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "no_eligible_model"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "selector_overloaded"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "selector_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", "selector_timeout"),
}


def from_selector_error(error: grpc.RpcError, address: str) -> GatewayError:
    status, type_, code = _FROM_GRPC.get(error.code(), (502, "api_error", "selector_error"))
    if status >= 500:
        message = f"the selector at {address} could not route the request ({error.code().name}: {error.details()})"
    else:
        message = error.details() or error.code().name
    return GatewayError(status, message, type=type_, code=code)


class ContainFailures:
    """ASGI middleware: an exception that no handler caught becomes OpenAI's JSON 500 (when the response has not
    started) and at most one log line per kind and interval, naming the exception's type and where it was
    raised, never its message (which can quote the request's text). Without it Starlette answered text/plain
    and uvicorn logged a whole traceback per request: 20 bad requests wrote 840 lines."""

    def __init__(self, app, log: AggregatedLog):
        self.app = app
        self.log = log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:           # the client left while its body was read: nobody to answer or blame
            return
        except Exception as e:             # noqa: BLE001 - what this middleware is for
            frame = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            self.log.warning((type(e).__name__, where, started), "a request failed on an unexpected %s at %s (%s)",
                             type(e).__name__, where, "its answer had started: cut off" if started else "answered 500")
            if not started:
                error = GatewayError(500, f"the gateway failed on this request ({type(e).__name__}); the failure is "
                                          f"logged, without the request's text", type="api_error",
                                     code="internal_error")
                await error.response()(scope, receive, send)
