"""Numba kernels.  Every kernel is ``@njit(nogil=True, cache=True)``; parallel ones run
under :data:`pyengine.kernels.pool.POOL`."""
