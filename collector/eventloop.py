"""Which asyncio event loop the commands run on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


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
