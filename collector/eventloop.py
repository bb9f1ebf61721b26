"""Which asyncio event loop the commands run on, and the process settings that go with running one.

asyncio is imported where a loop is made, not here: the process entry point (collector/__main__.py) uses
`start_up` around the command line's imports, asyncio's among them."""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterator

# The cyclic garbage collector's first-generation threshold for a running collector. CPython's default (700
# container objects allocated beyond those freed) makes a pass collect ~130 times and spend ~20 % of its CPU
# in the collector (docs/benchmarks.md, issue 9): decoded JSON bodies, coroutines and row batches live for a
# round trip, so each collection walks thousands of live objects only to find them still alive. Almost nothing
# on the hot path makes reference cycles (refcounting frees it), so collecting 14x less often loses nothing;
# the garbage that waits for a collection is at most this many objects (a few MB).
GC_FIRST_GENERATION_THRESHOLD = 10_000


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked for and installed (it is not on Windows), else None: the default loop."""
    if not use_uvloop:
        return None
    try:
        import uvloop  # noqa: PLC0415  # optional dependency
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def runner(use_uvloop: bool) -> asyncio.Runner:
    """The runner of a command's event loop (`with eventloop.runner(...) as r: r.run(main())`), after tuning
    the garbage collector for a long-running asyncio process (`tune_gc`)."""
    import asyncio  # noqa: PLC0415  # see the module docstring

    tune_gc()
    return asyncio.Runner(loop_factory=loop_factory(use_uvloop))


def tune_gc() -> None:
    """Collect less often, and never again walk what start-up made (modules, config, accounts): those objects
    live as long as the process, and moving them to the permanent generation (`gc.freeze`) spares every
    later full collection from traversing them. No collection first: start-up leaves no cyclic garbage to
    speak of (measured: 0 objects), and a full collection of ~43,000 objects costs ~40 ms of start-up.
    Idempotent: a later call freezes only what was made since."""
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_GENERATION_THRESHOLD, second, third)


@contextlib.contextmanager
def start_up() -> Iterator[None]:
    """No cyclic garbage collection while the block runs, then `tune_gc`: for the imports of a start, whose
    objects (modules, classes, functions, constants) live as long as the process and make no cyclic garbage
    to speak of. Collecting during them walks those objects again and again for nothing: ~50 collections,
    16-20 ms of CPU from spawn to the first Graph call of a `once` (issue 9). Afterwards they go to the
    permanent generation, and the collector is enabled again if it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        tune_gc()
        if enabled:
            gc.enable()
