"""A bounded in-process time series of the daemon's own counters, one point per minute.

Prometheus counters only know their current total; the overview charts want calls per second and throttles
over the last hours without a Prometheus server. `CounterSeries` samples the totals every few seconds and
keeps the latest sample of each minute in a ring of `keep` minutes (6 h by default: 360 small tuples), so
memory does not grow with uptime. The counters start at zero with the process, which is the baseline of the
first minute.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

STEP_S = 60.0
KEEP_STEPS = 360  # 6 hours of minutes
SAMPLE_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Point:
    """One minute: when it starts (epoch seconds), its length covered in seconds, and the increase of
    each counter over it."""

    start_s: float
    covered_s: float
    increases: tuple[float, ...]

    def rate(self, index: int) -> float:
        """Per-second rate of counter `index` over the covered part of the minute."""
        return self.increases[index] / self.covered_s if self.covered_s > 0 else 0.0


class CounterSeries:
    """Samples of `read()` (a tuple of counter totals, in the order of `names`) kept per minute."""

    def __init__(self, names: Sequence[str], read: Callable[[], tuple[float, ...]], *,
                 clock: Callable[[], float] = time.time, step_s: float = STEP_S,
                 keep: int = KEEP_STEPS) -> None:
        self.names = tuple(names)
        self._read = read
        self._clock = clock
        self._step_s = step_s
        self._baseline: tuple[float, tuple[float, ...]] = (clock(), tuple(0.0 for _ in names))
        # (minute index, sample time, totals): the latest sample seen in each minute.
        self._samples: collections.deque[tuple[int, float, tuple[float, ...]]] = collections.deque(
            maxlen=keep + 1)

    def sample(self) -> None:
        now = self._clock()
        values = self._read()
        minute = int(now // self._step_s)
        if self._samples and self._samples[-1][0] == minute:
            self._samples[-1] = (minute, now, values)
        else:
            if len(self._samples) == self._samples.maxlen:
                _, t, v = self._samples[0]
                self._baseline = (t, v)  # the point dropped becomes the baseline of the next one
            self._samples.append((minute, now, values))

    def points(self) -> list[Point]:
        """Oldest first; minutes without a sample (the daemon was busy or stopped) are simply absent."""
        out: list[Point] = []
        prev_t, prev_v = self._baseline
        for minute, t, values in self._samples:
            increases = tuple(max(0.0, v - p) for v, p in zip(values, prev_v, strict=True))
            out.append(Point(minute * self._step_s, t - prev_t, increases))
            prev_t, prev_v = t, values
        return out

    async def run(self, every_s: float = SAMPLE_EVERY_S) -> None:
        while True:
            self.sample()
            await asyncio.sleep(every_s)
