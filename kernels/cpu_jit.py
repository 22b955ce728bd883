"""The decorator of the compiled CPU loops, public for the packages above kernels (predictor_service's
compiled tokenizer paths use it): numba's njit, cached on disk where it can be. It lives in the private
kernels/_numba.py, which the modules of kernels import directly; everyone else imports it from here."""

from ._numba import compiled

__all__ = ["compiled"]
