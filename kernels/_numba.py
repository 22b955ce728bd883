"""numba's njit as this project uses it: cached on disk where it can be."""

import hashlib
import inspect
from pathlib import Path

import numba
from numba.core.caching import FunctionCache


class _StampedCache(FunctionCache):
    """numba's on-disk cache, its key extended by a stamp of other files' source. numba drops a cached
    function only when the function's own file changes, yet the cached machine code holds a copy of every
    compiled function it calls, from any file: an edit there would leave this one running the old code."""

    def __init__(self, py_func, stamp: str):
        super().__init__(py_func)
        self._stamp = stamp

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), self._stamp)


def compiled(*, depends_on=(), **options):
    """Decorator: njit(cache=True, nogil=True, **options). depends_on: the modules (other files) whose compiled
    functions this one calls; their source is part of the cache key.

    numba picks the cache folder when it decorates and raises if none is writable (a read-only install run as
    another user); the service must still start then, so the function compiles once per process (~2 s)
    instead."""
    def decorate(fn):
        try:
            dispatcher = numba.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:
            return numba.njit(nogil=True, **options)(fn)
        if depends_on:
            sources = b"".join(Path(inspect.getfile(module)).read_bytes() for module in depends_on)
            dispatcher._cache = _StampedCache(fn, hashlib.sha256(sources).hexdigest())
        return dispatcher
    return decorate
