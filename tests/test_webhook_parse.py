"""Unit tier: signature check, payload validation and row building of the webhook receiver (pure)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import orjson
import pytest

from collector import models, webhook

SECRET = b"app-secret-for-tests"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _sig(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _body(value: dict[str, object], *, entry_id: object = "17841400000000001", time: object = 1547687043,
          field: str = "story_insights") -> bytes:
    return orjson.dumps({"object": "instagram", "entry": [
        {"id": entry_id, "time": time, "changes": [{"field": field, "value": value}]}]})


class TestSignature:
    def test_valid_signature_passes_in_either_hex_case(self) -> None:
        body = b'{"object":"instagram","entry":[]}'
        assert webhook.verify_signature(SECRET, body, _sig(body)) is None
        assert webhook.verify_signature(SECRET, body, "sha256=" + _sig(body)[7:].upper()) is None
        assert webhook.verify_signature(SECRET, body, "SHA256=" + _sig(body)[7:]) is None

    @pytest.mark.parametrize("header", [None, "", "sha1=abc", "deadbeef"])
    def test_missing_or_other_scheme_is_unsigned(self, header: str | None) -> None:
        assert webhook.verify_signature(SECRET, b"{}", header) == webhook.Outcome.UNSIGNED

    def test_wrong_secret_altered_body_or_garbage_is_bad_signature(self) -> None:
        body = b'{"a":1}'
        assert webhook.verify_signature(SECRET, body, _sig(body, b"other")) == webhook.Outcome.BAD_SIGNATURE
        assert webhook.verify_signature(SECRET, b'{"a":2}', _sig(body)) == webhook.Outcome.BAD_SIGNATURE
        assert webhook.verify_signature(SECRET, body, "sha256=zz\udcff") == webhook.Outcome.BAD_SIGNATURE
        assert webhook.verify_signature(SECRET, body, "sha256=") == webhook.Outcome.BAD_SIGNATURE


class TestParse:
    def test_meta_sample_payload(self) -> None:
        body = _body({"media_id": "17887498072083520", "impressions": 444, "reach": 44, "taps_forward": 4,
                      "taps_back": 3, "exits": 3, "replies": 0})
        delivery = webhook.parse_delivery(body)
        assert delivery.object == "instagram"
        [change] = delivery.changes
        assert isinstance(change, webhook.StoryInsights)
        assert change.ig_user_id == 17841400000000001
        assert change.media_id == 17887498072083520
        assert change.values == {"impressions": 444, "reach": 44, "taps_forward": 4, "taps_back": 3,
                                 "exits": 3, "replies": 0}
        assert change.event_time == datetime(2019, 1, 17, 1, 4, 3, tzinfo=UTC)

    def test_time_in_milliseconds_and_absent(self) -> None:
        ms = webhook.parse_delivery(_body({"media_id": "1", "reach": 1}, time=1547687043123)).changes[0]
        assert isinstance(ms, webhook.StoryInsights)
        assert ms.event_time == datetime(2019, 1, 17, 1, 4, 3, 123000, tzinfo=UTC)
        none = webhook.parse_delivery(_body({"media_id": "1", "reach": 1}, time=None)).changes[0]
        assert isinstance(none, webhook.StoryInsights) and none.event_time is None

    def test_unknown_numeric_keys_are_metrics_and_non_numeric_ones_are_skipped(self) -> None:
        change = webhook.parse_delivery(_body({"media_id": 5, "views": 10, "navigation": 2.5, "shares": -1,
                                               "note": "x", "flag": True, "nested": {"a": 1}})).changes[0]
        assert isinstance(change, webhook.StoryInsights)
        assert change.values == {"views": 10, "navigation": 2.5, "shares": -1}

    def test_numeric_strings_are_values(self) -> None:
        change = webhook.parse_delivery(_body({"media_id": "5", "reach": "44", "exits": " 3 ", "shares": "-1",
                                               "note": "x1"})).changes[0]
        assert isinstance(change, webhook.StoryInsights)
        assert change.values == {"reach": 44, "exits": 3, "shares": -1}

    def test_other_fields_and_entries_without_changes(self) -> None:
        body = orjson.dumps({"object": "instagram", "entry": [
            {"id": "7", "time": 1, "changes": [{"field": "comments", "value": {"text": "hi"}}]},
            {"id": "8", "time": 1, "messaging": [{}]}]})
        assert webhook.parse_delivery(body).changes == [webhook.OtherChange(7, "comments")]

    @pytest.mark.parametrize("body", [
        b"", b"not json", b"[1,2]", b'"text"', b'{"object":"instagram"}', b'{"object":1,"entry":[]}',
        b'{"object":"instagram","entry":{}}', b'{"object":"instagram","entry":[1]}',
        b'{"object":"instagram","entry":[{"time":1,"changes":[]}]}',
        b'{"object":"instagram","entry":[{"id":"12a","changes":[]}]}',
        b'{"object":"instagram","entry":[{"id":"99999999999999999999","changes":[]}]}',
        b'{"object":"instagram","entry":[{"id":"1","changes":{}}]}',
        b'{"object":"instagram","entry":[{"id":"1","changes":[{"value":{}}]}]}',
        b'{"object":"instagram","entry":[{"id":"1","time":"yesterday","changes":[]}]}',
        _body({"reach": 1}), _body({"media_id": "x1", "reach": 1}), _body({"media_id": "1"}),
        _body({"media_id": "1", "Reach Count": 3}), _body([1, 2]),  # type: ignore[arg-type]
        _body({"media_id": "1", "reach": 1}, entry_id=True),
        "{\"object\":\"instagram\",\"entry\":[{\"id\":\"\u0661\",\"changes\":[]}]}".encode(),
    ])
    def test_malformed(self, body: bytes) -> None:
        with pytest.raises(webhook.MalformedDelivery):
            webhook.parse_delivery(body)


class TestRows:
    def test_rows_for_a_story(self) -> None:
        change = webhook.StoryInsights(11, 22, {"reach": 44, "replies": 0, "views": -1, "exits": -3}, None)
        rows = webhook.rows_for(change, NOW)
        assert rows.media == [models.MediaRow(22, 11, None, "STORY", None, None, None, None, NOW, NOW)]
        assert rows.insights == [models.MediaInsightRow(22, "reach", "", "", 44, NOW),
                                 models.MediaInsightRow(22, "replies", "", "", 0, NOW)]
        assert [(u.metric, u.reason) for u in rows.unavailable] == [
            ("exits", models.UnavailableReason.NO_DATA),
            ("views", models.UnavailableReason.NOT_ENOUGH_VIEWERS)]
        assert all(u.object_type == "media" and u.object_id == 22 and u.scope == "" for u in rows.unavailable)
