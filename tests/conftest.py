"""The fixtures every test file uses: the three backends, and fresh backends under mutmut."""

from tests.support import _fresh_backends, anyio_backend

__all__ = ["_fresh_backends", "anyio_backend"]
