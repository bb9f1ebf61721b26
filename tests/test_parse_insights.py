"""Parsing every insights shape Meta sends (reference §2.6, §3.3)."""

from datetime import UTC, datetime

from collector import parsing


def test_lifetime_values_and_total_value_both_read() -> None:
    items = [
        {"name": "reach", "period": "lifetime", "values": [{"value": 12}]},
        {"name": "views", "period": "lifetime", "total_value": {"value": 40}},
        {"name": "reels_skip_rate", "values": [{"value": 0.25}]},
    ]
    got = {(v.metric, v.breakdown, v.dimension): v.value for v in parsing.parse_insight_items(items)}
    assert got == {("reach", "", ""): 12, ("views", "", ""): 40, ("reels_skip_rate", "", ""): 0.25}


def test_breakdown_values_are_upper_cased_enums() -> None:
    items = [{"name": "navigation", "values": [{"value": 25}], "total_value": {
        "value": 25, "breakdowns": [{"dimension_keys": ["story_navigation_action_type"], "results": [
            {"dimension_values": ["tap_forward"], "value": 19},
            {"dimension_values": ["swipe_forward"], "value": 6},
        ]}]}}]
    got = {(v.breakdown, v.dimension): v.value for v in parsing.parse_insight_items(items)}
    assert got == {("", ""): 25, ("story_navigation_action_type", "TAP_FORWARD"): 19,
                   ("story_navigation_action_type", "SWIPE_FORWARD"): 6}


def test_demographics_drop_timeframe_key_and_keep_city_spelling() -> None:
    items = [{"name": "follower_demographics", "period": "lifetime", "total_value": {"breakdowns": [
        {"dimension_keys": ["timeframe", "city"], "results": [
            {"dimension_values": ["THIS_MONTH", "London, England"], "value": 7}]}]}}]
    [value] = parsing.parse_insight_items(items)
    assert (value.metric, value.breakdown, value.dimension, value.value) == (
        "follower_demographics", "city", "London, England", 7)


def test_time_series_keeps_end_times_and_skips_non_numbers() -> None:
    items = [{"name": "reach", "period": "day", "values": [
        {"value": 12, "end_time": "2018-01-11T08:00:00+0000"},
        {"value": {"0": 3}, "end_time": "2018-01-12T08:00:00+0000"},
        {"value": True, "end_time": "2018-01-13T08:00:00+0000"},
    ]}]
    [value] = parsing.parse_insight_items(items)
    assert value.end_time == datetime(2018, 1, 11, 8, tzinfo=UTC)
    assert value.value == 12
