"""Reading Meta's answers: insight values in every shape Meta sends, and media items.

Pure functions, no I/O: what the Graph API returned in, plain values out (reference §2.6, §3.3, §4).
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from collector import models, pacific

# Breakdown values Meta spells in either case (reference §3.1, §2.2); stored upper-case. Free-text dimensions
# (city names) keep Meta's spelling.
ENUM_BREAKDOWNS = frozenset({
    "action_type", "story_navigation_action_type", "media_product_type", "follow_type", "contact_button_type",
})


_INTEGER = re.compile(r"-?[0-9]+")
_SECONDS_MAX = 1e11  # seconds (~3,000 years; as a timestamp, year 5138): beyond, datetime overflows


def number(value: object) -> models.Number | None:
    """A metric value: a JSON number, or a numeric string (some APIs and fakes quote big or exact numbers;
    nothing in Meta's docs rules it out). Anything else (bool, null, map, NaN) is no value."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        return _numeric_text(value)
    return None


def positive_number(value: object) -> float | None:
    """A count of seconds or a timestamp Meta sent (`expires_in`, `expires_at`): a number or a numeric
    string, above 0; None for 0 ("never"), absent, past any date a datetime holds, or anything else."""
    parsed = number(value)
    return float(parsed) if parsed is not None and 0 < parsed < _SECONDS_MAX else None


def _numeric_text(text: str) -> models.Number | None:
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        parsed = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return None
    return parsed if parsed.is_finite() else None


class InsightValue(NamedTuple):
    """One value of an insights answer. A NamedTuple, not a frozen dataclass: ~10 are built per Graph call,
    and a frozen dataclass's __init__ (object.__setattr__ per field) cost 3x as much (docs/benchmarks.md)."""

    metric: str
    breakdown: str
    dimension: str
    value: models.Number
    end_time: datetime | None = None


def parse_insight_items(items: object) -> list[InsightValue]:
    """Every value in an insights `data[]`, whatever its shape: `values[{value,end_time}]` (time series or
    lifetime), `total_value.value`, and `total_value.breakdowns[].results[]` mapped by `dimension_keys`
    (the `timeframe` key some payloads add is dropped). Non-numeric values (an hour map) are left to the
    caller."""
    found: list[InsightValue] = []
    if not isinstance(items, list | tuple):  # `data` that is not a list (null, an object) holds no value
        return found
    for item in items:
        # Shapes are checked, not trusted: a stray string or null where Meta documents an object must cost
        # that one value, never raise out of the job (reference §2.6, §3.3).
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if not isinstance(name, str):
            continue
        total = item.get("total_value")
        if isinstance(total, dict):
            raw = total.get("value")
            plain = raw if type(raw) is int or type(raw) is float else number(raw)
            if plain is not None:
                found.append(_new_value(InsightValue, (name, "", "", plain, None)))
            breakdowns = total.get("breakdowns")
            for breakdown in breakdowns if isinstance(breakdowns, list) else ():
                if isinstance(breakdown, dict):
                    found.extend(_breakdown_values(name, breakdown))
            if plain is not None:
                continue
        entries = item.get("values")
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            raw = entry.get("value")
            # The common case first: a plain JSON number (exact types: bool is an int subclass).
            value = raw if type(raw) is int or type(raw) is float else number(raw)
            if value is None:
                continue
            end = entry.get("end_time")
            found.append(_new_value(InsightValue, (name, "", "", value,
                                                   None if end is None else time_or_none(end))))
    return found


# tuple.__new__ skips the NamedTuple's Python-level __new__ (~30 % cheaper per value, ~10 values a call).
_new_value = tuple.__new__


def time_or_none(value: object) -> datetime | None:
    """A Graph timestamp as an aware datetime, or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return pacific.parse_graph_time(value)
    except ValueError:
        return None


def _breakdown_values(metric: str, breakdown: dict[str, Any]) -> list[InsightValue]:
    keys = breakdown.get("dimension_keys")
    results = breakdown.get("results")
    if not isinstance(keys, list) or not isinstance(results, list):
        return []
    keys = [str(key) for key in keys]
    keep = [i for i, key in enumerate(keys) if key != "timeframe"]
    name = ",".join(keys[i] for i in keep)
    upper = all(keys[i] in ENUM_BREAKDOWNS for i in keep)
    values: list[InsightValue] = []
    for result in results:
        if not isinstance(result, dict):
            continue
        dims = result.get("dimension_values")
        raw = result.get("value")
        value = raw if type(raw) is int or type(raw) is float else number(raw)
        if value is None or not isinstance(dims, list) or len(dims) != len(keys):
            continue
        dimension = ",".join(str(dims[i]) for i in keep)
        if upper:
            dimension = dimension.upper()
        values.append(_new_value(InsightValue, (metric, name, dimension, value, None)))
    return values


@dataclass(frozen=True, slots=True)
class Media:
    media_id: int
    media_type: str | None
    media_product_type: str | None
    posted_at: datetime | None
    permalink: str | None
    like_count: int | None
    comments_count: int | None


def media_item(item: object, *, story: bool = False) -> Media | None:
    if not isinstance(item, dict):
        return None
    # Graph ids are strings, but a JSON number is the same id (some clients and fakes emit numbers).
    media_id = int_or_none(item.get("id"))
    if media_id is None or media_id < 0:
        return None
    product = str_or_none(item.get("media_product_type"))
    return Media(media_id, str_or_none(item.get("media_type")), "STORY" if story else product,
                 time_or_none(item.get("timestamp")), str_or_none(item.get("permalink")),
                 int_or_none(item.get("like_count")), int_or_none(item.get("comments_count")))


def int_or_none(value: object) -> int | None:
    """An integer field (id, count): a JSON integer or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
