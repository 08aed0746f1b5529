"""Numba kernels.  Every kernel is ``@njit(nogil=True, cache=True)``."""
