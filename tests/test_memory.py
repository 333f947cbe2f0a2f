from __future__ import annotations

import gc
import platform

import pytest

from server.memory import malloc_trim, release


class _Cycle:
    def __init__(self) -> None:
        self.me = self
        self.payload = bytearray(1 << 16)


def test_release_collects_cycles_and_trims() -> None:
    gc.disable()  # only release() may collect here
    try:
        for _ in range(100):
            _Cycle()
        before = sum(isinstance(o, _Cycle) for o in gc.get_objects())
        assert before == 100
        trimmed = release()
        assert sum(isinstance(o, _Cycle) for o in gc.get_objects()) == 0
    finally:
        gc.enable()
    if platform.libc_ver()[0] == "glibc":
        assert trimmed and malloc_trim()
    else:
        pytest.skip("malloc_trim is glibc's")
