"""numba's njit as this project uses it: cached on disk where it can be."""

import numba


def compiled(**options):
    """Decorator: njit(cache=True, nogil=True, **options). numba picks the cache folder when it decorates and
    raises if none is writable (a read-only install run as another user); the service must still start
    then, so the function compiles once per process (~2 s) instead."""
    def decorate(fn):
        try:
            return numba.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:
            return numba.njit(nogil=True, **options)(fn)
    return decorate
