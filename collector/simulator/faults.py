"""Deterministic fault injection.

A fault is decided from hash(seed, request identity, n) where the identity is the method, the path
without its version and the sorted query without `access_token`, and n counts how often that identity has
been seen. So a given call fails the same way on its nth try in every run, and its retry (n+1) draws
again and can succeed. `decide` is pure so tests can predict exactly which try fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Order of the cumulative draw: a request gets at most one fault.
KINDS = ("http_5xx", "code1", "code2", "slow", "drop", "truncate")


@dataclass(frozen=True, slots=True)
class FaultRates:
    http_5xx: float = 0.0  # HTTP 502 with a non-JSON body
    code1: float = 0.0  # code 1 "An unknown error occurred", HTTP 500
    code2: float = 0.0  # code 2, is_transient: true, HTTP 500
    slow: float = 0.0  # the answer comes after `slow_delay_s`
    drop: float = 0.0  # the connection is closed without an answer
    truncate: float = 0.0  # valid headers, the JSON body cut in half
    slow_delay_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return any(getattr(self, kind) > 0 for kind in KINDS)


def identity(method: str, path: str, params: dict[str, str]) -> str:
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "access_token")
    return f"{method} {path}?{query}"


def decide(seed: int, request_identity: str, n: int, rates: FaultRates) -> str | None:
    """The fault of the nth (1-based) occurrence of a request, or None."""
    digest = hashlib.blake2b(f"{seed}\x1f{request_identity}\x1f{n}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    for kind in KINDS:
        u -= getattr(rates, kind)
        if u < 0:
            return kind
    return None


class Faults:
    def __init__(self, seed: int, rates: FaultRates) -> None:
        self.seed = seed
        self.rates = rates
        self.enabled = rates.enabled
        self._seen: dict[bytes, int] = {}

    def reset(self) -> None:
        self._seen.clear()

    def next(self, request_identity: str) -> str | None:
        if not self.enabled:
            return None
        key = hashlib.blake2b(request_identity.encode(), digest_size=12).digest()
        n = self._seen.get(key, 0) + 1
        self._seen[key] = n
        return decide(self.seed, request_identity, n, self.rates)
