"""RouteStream's machinery: one stream's reading, concurrent decisions and writing, the slots that bound
them, and the drain on stop (docs/selector.md, "Many Routes on one stream"). What each message is decided
into is the servicer's (selector/service.py, `_stream_route`); this module only moves messages.

A message holds a slot of its stream (stream_max_in_flight) until its answer is written, and one of the
server's (max_concurrent_stream_messages) while it is decided. The stream is read no further while its own
slots are taken or a message it read waits for a server slot, so gRPC's flow control holds back a writer
that outpaces the predictor, or a reader that does not read its answers (whose unwritten answers hold only
its own slots), and streams wait rather than fail. When the selector stops, each stream stops reading,
answers what it has read, and ends with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import grpc

from selector.config import SelectorConfig
from selector.log_limits import AggregatedLog
from selector.proto import selector_pb2 as pb

_END_OF_STREAM = object()
SHUTTING_DOWN = ("the selector is shutting down: every message it read was answered; send the rest on a new "
                 "stream")


def _error(item, code: str, message: str) -> pb.RouteStreamResponse:
    """An answer that is an error, for a message that `decide` could not answer itself."""
    return pb.RouteStreamResponse(id=getattr(item, "id", ""), error=pb.RouteError(code=code, message=message))


class RouteStreams:
    """The server's streams: the server-wide slots, the running readers, and whether it is draining."""

    def __init__(self, config: SelectorConfig, warnings: AggregatedLog):
        self._per_stream = config.stream_max_in_flight
        self._slots = asyncio.Semaphore(config.max_concurrent_stream_messages)
        self._readers: set[asyncio.Task] = set()
        self._drain_asked: set[asyncio.Task] = set()
        self.draining = False
        self._warnings = warnings

    async def serve(self, requests, context, decide: Callable[[object], Awaitable[pb.RouteStreamResponse]]) -> None:
        """Answers each message of `requests` (a deserializer's outputs) with `decide(message)`, which
        never raises but for cancellation, as each is decided."""
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        answers: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self._per_stream)
        working: set[asyncio.Task] = set()

        def answered(task: asyncio.Task) -> None:
            working.discard(task)
            if task.cancelled():             # even before it ran: no answer will come, its slots go back
                slots.release()
                self._slots.release()

        async def answer(item):
            try:
                response = await decide(item)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise            # the stream is ending: no answer is owed
                # Not this task's cancellation but one from below it (a predictor channel closed under
                # its call): the message is answered and the stream goes on.
                response = _error(item, "UNAVAILABLE", "the predictor call was cancelled; retry")
            except Exception:        # a bug: the message still gets its answer, the stream goes on
                self._warnings.log(logging.ERROR, ("RouteStream", "bug"), "RouteStream failed", exc_info=True)
                response = _error(item, "INTERNAL", "internal error in the selector; see its log")
            self._slots.release()             # decided; its stream's slot goes back once written
            answers.put_nowait(response)

        def start(item) -> None:
            task = asyncio.create_task(answer(item))
            working.add(task)
            task.add_done_callback(answered)

        async def read() -> bool:
            """Reads until the stream ends (False) or the selector drains (True), then waits for the
            messages it read to be decided. The stream's slot is taken before a message is read (so a full
            stream is not read); the server's once one has come (so idle streams hold none)."""
            me = asyncio.current_task()
            holding, drained, waiting = False, self.draining, None   # waiting: read, not yet given a server slot
            try:
                if not drained:
                    self._readers.add(me)      # from its first step: drain() cancels only running readers
                    try:
                        await slots.acquire()
                        holding = True
                        async for item in requests:
                            waiting = item
                            await self._slots.acquire()
                            start(item)
                            waiting, holding = None, False
                            await slots.acquire()
                            holding = True
                    except asyncio.CancelledError:
                        # drain()'s cancel alone is a request to stop reading; any other (the caller's, the
                        # handler's, the end of the grace period) ends the reader.
                        if me not in self._drain_asked or me.cancelling() != 1:
                            raise
                        me.uncancel()
                        drained = True
                    finally:
                        self._readers.discard(me)
                        self._drain_asked.discard(me)
                if waiting is not None:          # read before the drain: it is answered too
                    await self._slots.acquire()
                    start(waiting)
                    holding = False
                if working:
                    await asyncio.wait(set(working))
                return drained
            finally:
                if holding:
                    slots.release()
                answers.put_nowait(_END_OF_STREAM)

        reader = asyncio.create_task(read())
        # Retrieved here, so that a reader failing after the handler has gone logs no "never retrieved".
        reader.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            while (response := await answers.get()) is not _END_OF_STREAM:
                try:
                    await context.write(response)
                finally:
                    slots.release()
            drained = await reader             # re-raises what ended the reading, if it failed
        finally:
            reader.cancel()
            for task in list(working):
                task.cancel()
            while not answers.empty():           # decided, never written (the caller went away)
                if answers.get_nowait() is not _END_OF_STREAM:
                    slots.release()
        if drained:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def drain(self) -> None:
        """Stops every RouteStream reading (SelectorServer.stop, before the grace period): each answers
        what it has read and ends, instead of being cut off when the grace period is over; a stream that
        starts after this ends at once."""
        self.draining = True
        for reader in list(self._readers):
            if reader not in self._drain_asked:
                self._drain_asked.add(reader)
                reader.cancel()
