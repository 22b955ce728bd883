"""What a request must pass before the selector works on it: it decodes, and its bytes fit the budget.

grpc.aio calls a method's request_deserializer on the event loop before the handler runs; the generated one
(`FromString`) raises DecodeError on invalid UTF-8 in a string field, which grpc answers with
UNKNOWN "Unexpected <class 'DecodeError'>" and a traceback in the log. The deserializers here never raise:
they hand the handler a marker, and the handler answers INVALID_ARGUMENT.

Big messages (>= big_request_bytes) are not decoded by the deserializer at all: their size is known from the
bytes, so the bytes-in-flight budget is checked first (RESOURCE_EXHAUSTED past it, before any decoding), and
at most max_concurrent_big_requests of them are decoded and worked on at once, so that a burst of
RouteBatches of 20,000 prompts neither multiplies memory (one RouteBatch of 11.3 MiB alone raised RSS by
48 MiB: ~2x for gRPC's receive, ~2x decoded; docs/faults.md) nor fills Triton's queue ahead of Route calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from selector.config import SelectorConfig
from selector.metrics import SelectorMetrics

MAX_ERROR_MESSAGE_CHARS = 2000      # gRPC's metadata limit is 8 KiB by default; a longer message is dropped
PROMPTS_PER_SLICE = 1000            # strings made per event-loop turn: ~7 ms for 3 KiB prompts


def short_message(message: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    """The start of `message` (which names the field), cut to `limit` characters with a note of what was cut.

    An allow list of ~16 KB of unknown names made a status message over gRPC's metadata limit: the client
    got RESOURCE_EXHAUSTED "Stream removed" instead of INVALID_ARGUMENT."""
    if len(message) <= limit:
        return message
    return f"{message[:limit - 40]} ... ({len(message) - limit + 40} more characters cut)"


class Rejected(Exception):
    """A request refused before its handler ran: the metric's reason, the status code and its message."""

    def __init__(self, reason: str, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.reason, self.code, self.message = reason, code, message


class Undecodable:
    """The request bytes did not parse as the method's message; `id` is a RouteStreamRequest's, read from
    its first bytes (leading_id), so that its error answer still names it."""

    __slots__ = ("reason", "id")

    def __init__(self, reason: str, id: str = ""):
        self.reason, self.id = reason, id


class Deferred:
    """A big request's bytes, decoded once it is admitted."""

    __slots__ = ("data", "message_class")

    def __init__(self, data: bytes, message_class):
        self.data = data
        self.message_class = message_class


def leading_id(data: bytes | None) -> str:
    """The id of a serialized RouteStreamRequest, read from its first field without decoding the rest (its
    prompt may be megabytes): the serializers write field 1 first. "" if it is not there or not UTF-8."""
    if not data or data[:1] != b"\x0a":
        return ""
    length, shift, at = 0, 0, 1
    while at < len(data) and at < 6:
        byte = data[at]
        length |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            try:
                return data[at:at + length].decode("utf-8") if at + length <= len(data) else ""
            except UnicodeDecodeError:
                return ""
        shift += 7
    return ""


def _reason(error: DecodeError, message_class) -> str:
    # upb's own text names only the type, not what is wrong, so the message lists what it can be.
    return (f"the request is not a valid {message_class.DESCRIPTOR.full_name} (truncated or malformed bytes, "
            f"or invalid UTF-8 in a string field): {str(error)[:200]}")


class Admission:
    """One per server: the bytes-in-flight budget and the gate of big requests (both on one event loop)."""

    def __init__(self, config: SelectorConfig, metrics: SelectorMetrics):
        self.max_in_flight_bytes = config.max_in_flight_bytes
        self.big_request_bytes = config.big_request_bytes
        self.in_flight_bytes = 0
        self._big = asyncio.Semaphore(config.max_concurrent_big_requests)
        self._metrics = metrics
        metrics.in_flight_bytes.set_function(lambda: self.in_flight_bytes)

    def deserializer(self, message_class) -> Callable[[bytes], object]:
        big = self.big_request_bytes
        streamed = message_class.DESCRIPTOR.full_name.endswith(".RouteStreamRequest")

        def decode(data: bytes):
            if len(data) >= big:
                return Deferred(data, message_class)
            try:
                return message_class.FromString(data)
            except DecodeError as e:
                return Undecodable(_reason(e, message_class), leading_id(data) if streamed else "")

        return decode

    def guard(self, method: str, behavior: Callable[[object, object], Awaitable]):
        """`behavior` (a servicer method) behind the checks: decoded, within budget, through the big gate."""

        async def admitted(request, context):
            kind = type(request)
            if kind is not Deferred and kind is not Undecodable:       # the common, small case
                return await behavior(request, context)
            try:
                async with self.message(request) as message:
                    return await behavior(message, context)
            except Rejected as e:
                self.count_rejection(method, e)
                await context.abort(e.code, short_message(e.message))

        return admitted

    @contextlib.asynccontextmanager
    async def message(self, request):
        """The decoded message of `request` (what a deserializer above returned), held within the bytes
        budget and the big gate while the body runs; Rejected if it cannot be. For RouteStream, whose
        messages are answered one by one rather than by aborting the call."""
        kind = type(request)
        if kind is Undecodable:
            raise Rejected("undecodable", grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        if kind is not Deferred:
            yield request
            return
        size = len(request.data)
        if size > self.max_in_flight_bytes:       # never admissible: a retry would be refused the same way
            raise Rejected("over_budget", grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"this request is {size} bytes, over the selector's whole budget of "
                           f"{self.max_in_flight_bytes} bytes for requests in flight (--max-in-flight-mib): "
                           f"it can never be admitted; send smaller batches")
        if self.in_flight_bytes + size > self.max_in_flight_bytes:
            raise Rejected("bytes_in_flight", grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"the selector is holding {self.in_flight_bytes} bytes of requests and this one is "
                           f"{size} bytes, over its budget of {self.max_in_flight_bytes}; retry with backoff "
                           f"or send smaller batches")
        self.in_flight_bytes += size
        try:
            async with self._big:
                data, request.data = request.data, None
                try:
                    message = request.message_class.FromString(data)
                except DecodeError as e:
                    raise Rejected("undecodable", grpc.StatusCode.INVALID_ARGUMENT,
                                   _reason(e, request.message_class)) from None
                finally:
                    del data
                yield message
        finally:
            self.in_flight_bytes -= size

    def count_rejection(self, method: str, rejected: "Rejected") -> None:
        self._metrics.rejected.labels(method, rejected.reason).inc()
        self._metrics.errors.labels(method, rejected.code.name).inc()


async def materialise(repeated, *, per_slice: int = PROMPTS_PER_SLICE) -> list:
    """list(repeated field) in slices with a yield between: the strings of 20,000 prompts of 3 KiB take
    ~145 ms to make, which in one call would stall every other request on the event loop that long."""
    if len(repeated) <= per_slice:
        return list(repeated)
    out: list = []
    for start in range(0, len(repeated), per_slice):
        out.extend(repeated[start:start + per_slice])
        await asyncio.sleep(0)
    return out


def add_selector_servicer(servicer, server: grpc.aio.Server, admission: Admission) -> None:
    """As the generated add_SelectorServicer_to_server, with the deserializers and guards above."""
    from selector.proto import selector_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Selector"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        if method.client_streaming:      # RouteStream: each message is admitted by the handler itself
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _streaming(getattr(servicer, method.name), admission),
                request_deserializer=admission.deserializer(request_class),
                response_serializer=response_class.SerializeToString)
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            admission.guard(method.name, getattr(servicer, method.name)),
            request_deserializer=admission.deserializer(request_class),
            response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _streaming(behavior, admission: Admission):
    """A stream handler as grpc.aio wants it (a coroutine function of requests and context), given the
    admission its messages pass one by one."""

    async def handler(requests, context):
        await behavior(requests, context, admission)

    return handler
