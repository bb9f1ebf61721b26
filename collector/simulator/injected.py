"""Injected answers: any Graph answer for chosen calls, over the simulator's own (tests of error scoping).

The simulator's world decides the ordinary errors (tokens, budgets, unsupported metrics, 2108006, few
viewers); an injection replaces the answer of the calls it matches with whatever Meta may send instead:
an error envelope (recorded bodies from the reference), a 200 whose JSON is an error, the real page with
an "error" object beside its data, or a raw body (a 5xx without JSON). The real call is still served first
(budgets and stats count it), then its answer is swapped: one hook in `api.Simulator.call` (single
calls; the operations of a batch request are not rewritten).

    sim.injected.add(injected.Injection(kind="media_insights", object_id="17900000000000001", status=400,
                                        error=rules.error("(#10) Application does not have permission for "
                                                          "this action", 10)))
    sim.injected.add(injected.Injection(kind="media", when=lambda q: "after" in q, status=200,
                                        error=rules.server_unknown(), beside_data=True, times=1))
    sim.injected.add(injected.Injection(kind="media", status=200, rewrite=lambda query, body: {...}))

`rewrite` (with neither `error` nor `raw`) passes the real JSON answer through a function of the query and
the decoded body, e.g. to end a first page early with a `paging.next` so that a walk has a second page.

`kind` is the simulator's endpoint kind (`profile`, `media`, `stories`, `media_insights`,
`account_insights`, `media_object`); `object_id` the path's first id (None: any); `when` a predicate on
the query; `times` how many matching calls are answered (None: all). Calls with an invalid token are never
rewritten: the token's own error stands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True)
class Injection:
    kind: str
    status: int
    error: Mapping[str, Any] | None = None  # answered as {"error": error} (or beside the data)
    raw: bytes | None = None  # answered as these bytes, when `error` is None
    beside_data: bool = False  # add `error` to the real answer's JSON instead of replacing it
    rewrite: Callable[[Mapping[str, str], dict[str, Any]], dict[str, Any]] | None = None
    object_id: str | None = None
    when: Callable[[Mapping[str, str]], bool] | None = None
    times: int | None = None
    served: int = 0

    def matches(self, kind: str, object_id: str, params: Mapping[str, str]) -> bool:
        return (kind == self.kind and (self.object_id is None or self.object_id == object_id)
                and (self.times is None or self.served < self.times)
                and (self.when is None or self.when(params)))

    def answer(self, params: Mapping[str, str], status: int, body: bytes) -> tuple[int, bytes]:
        self.served += 1
        if self.error is None and self.rewrite is not None:
            real = orjson.loads(body)
            return (status, body) if "error" in real else (status, orjson.dumps(self.rewrite(params, real)))
        if self.error is None:
            return self.status, self.raw or b""
        envelope = {**self.error, "fbtrace_id": f"Inj{self.served:08x}"}
        if self.beside_data:
            try:
                real = orjson.loads(body)
            except orjson.JSONDecodeError:
                real = None
            if isinstance(real, dict) and "error" not in real:
                return self.status, orjson.dumps({**real, "error": envelope})
        return self.status, orjson.dumps({"error": envelope})


class Injections:
    """The injections of one simulator, tried in the order they were added (the first match answers)."""

    def __init__(self) -> None:
        self.items: list[Injection] = []

    def add(self, injection: Injection) -> Injection:
        self.items.append(injection)
        return injection

    def clear(self) -> None:
        self.items.clear()

    def answer(self, kind: str, parts: list[str], params: Mapping[str, str], status: int, body: bytes, *,
               rewritable: bool) -> tuple[int, bytes]:
        """The (status, body) to send for this call: an injection's, or the simulator's own (always for a
        call that is not `rewritable`: a bad token, a transport fault)."""
        if not self.items or not rewritable:
            return status, body
        object_id = parts[0] if parts else ""
        for injection in self.items:
            if injection.matches(kind, object_id, params):
                return injection.answer(params, status, body)
        return status, body
