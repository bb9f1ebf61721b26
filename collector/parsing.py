"""Reading Meta's answers: insight values in every shape Meta sends, and media items.

Pure functions, no I/O: what the Graph API returned in, plain values out (reference §2.6, §3.3, §4).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from collector import models, pacific

# Breakdown values Meta spells in either case (reference §3.1, §2.2); stored upper-case. Free-text dimensions
# (city names) keep Meta's spelling.
ENUM_BREAKDOWNS = frozenset({
    "action_type", "story_navigation_action_type", "media_product_type", "follow_type", "contact_button_type",
})


def number(value: object) -> models.Number | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


@dataclass(frozen=True, slots=True)
class InsightValue:
    metric: str
    breakdown: str
    dimension: str
    value: models.Number
    end_time: datetime | None = None


def parse_insight_items(items: Iterable[dict[str, Any]]) -> list[InsightValue]:
    """Every value in an insights `data[]`, whatever its shape: `values[{value,end_time}]` (time series or
    lifetime), `total_value.value`, and `total_value.breakdowns[].results[]` mapped by `dimension_keys`
    (the `timeframe` key some payloads add is dropped). Non-numeric values (an hour map) are left to the
    caller."""
    found: list[InsightValue] = []
    for item in items:
        name = item.get("name")
        if not isinstance(name, str):
            continue
        total = item.get("total_value")
        if isinstance(total, dict):
            plain = number(total.get("value"))
            if plain is not None:
                found.append(InsightValue(name, "", "", plain))
            for breakdown in total.get("breakdowns") or ():
                found.extend(_breakdown_values(name, breakdown))
            if plain is not None:
                continue
        for entry in item.get("values") or ():
            value = number(entry.get("value")) if isinstance(entry, dict) else None
            if value is None:
                continue
            end = entry.get("end_time")
            found.append(InsightValue(name, "", "", value,
                                      pacific.parse_graph_time(end) if isinstance(end, str) else None))
    return found


def _breakdown_values(metric: str, breakdown: dict[str, Any]) -> list[InsightValue]:
    keys = breakdown.get("dimension_keys") or []
    keep = [i for i, key in enumerate(keys) if key != "timeframe"]
    name = ",".join(keys[i] for i in keep)
    upper = all(keys[i] in ENUM_BREAKDOWNS for i in keep)
    values: list[InsightValue] = []
    for result in breakdown.get("results") or ():
        dims = result.get("dimension_values") or []
        value = number(result.get("value"))
        if value is None or len(dims) != len(keys):
            continue
        dimension = ",".join(str(dims[i]) for i in keep)
        values.append(InsightValue(metric, name, dimension.upper() if upper else dimension, value))
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
    raw_id = item.get("id")
    if not isinstance(raw_id, str) or not raw_id.isdigit():
        return None
    stamp = item.get("timestamp")
    try:
        posted_at = pacific.parse_graph_time(stamp) if isinstance(stamp, str) else None
    except ValueError:
        posted_at = None
    product = str_or_none(item.get("media_product_type"))
    return Media(int(raw_id), str_or_none(item.get("media_type")), "STORY" if story else product,
                  posted_at, str_or_none(item.get("permalink")), int_or_none(item.get("like_count")),
                  int_or_none(item.get("comments_count")))


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
