"""Errors in OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, with their HTTP status."""

from __future__ import annotations

import grpc
from starlette.responses import JSONResponse


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
