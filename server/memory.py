"""Hand freed heap memory back to the operating system.

After a burst (a thousand WebSocket clients connecting and leaving, large messages queued for
slow readers) CPython frees its objects, but glibc's allocator keeps the freed pages in its
arenas: the process's RSS stays at the peak although nothing holds the memory (`make soak`
measures it: README "Reliability and security"). ``malloc_trim(0)`` returns those pages.
:func:`trim_periodically` runs it every ``server.malloc_trim_interval_s`` off the event loop;
it is a no-op where the C library has no ``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def malloc_trim() -> bool:
    """Return free heap pages to the OS; True if the C library did (glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True


async def trim_periodically(interval_s: float) -> None:
    """Run :func:`malloc_trim` in a worker thread every ``interval_s`` seconds, forever."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        if not await loop.run_in_executor(None, malloc_trim):
            return
