"""A virtual-time event loop for tests of waiting behaviour (pauses, pacing, limiters, backoff).

`loop.time()` starts at 0 and jumps straight to the next timer whenever nothing is ready to run, so sleeps
take no wall time and every duration a test measures with `loop.time()` is exact, however loaded the
machine is. aiolimiter reads `loop.time()`; give the code under test `loop.time` as its clock too.

    @virtual_time.test
    async def test_x() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(5)
        assert loop.time() - started == 5   # and the test took microseconds

No I/O: a loop that jumps time would time out any real socket.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        ready: Any = getattr(self, "_ready")  # noqa: B009  (asyncio's private run queue and timer heap)
        scheduled: Any = getattr(self, "_scheduled")  # noqa: B009
        if not ready and scheduled:  # nothing to run before the next timer: go there at once
            self._virtual_now = max(self._virtual_now, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


def test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function on a fresh VirtualTimeLoop (as a plain test: pytest-asyncio's loop is
    not involved)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(fn(*args, **kwargs))

    return run
