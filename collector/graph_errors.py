"""Classification of Graph API failures into the exception tree of collector/exceptions.py (pure).

The Graph error code decides, not the HTTP status: Meta sends throttles as 400, 403 or 429, and its
"permanent" answers as 400 too (reference graph-api.md §6.3, §7). Messages are matched only where the code
is ambiguous (code 10, code 100), and subcodes win over text (2108006's title changed capitalisation).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from collector import exceptions, redaction

# Throttling codes (§6.3): app (4, 341), user (17), pages (32), custom (613), business use case (80000-80014).
# 368 ("temporarily blocked for policies violations") is handled like a throttle: stop calling that account
# for a while instead of hammering it with fast retries.
THROTTLE_CODES = frozenset(
    {4, 17, 32, 341, 368, 613, 80000, 80001, 80002, 80003, 80004, 80005, 80006, 80008, 80009, 80014})
# 104: "An access token is required to request this resource" (a missing or empty token).
TOKEN_CODES = frozenset({102, 104, 190})
TRANSIENT_CODES = frozenset({1, 2})
SUBCODE_PRE_CONVERSION = 2108006
SUBCODE_OBJECT_NOT_FOUND = 33

_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*")
# "(#100) The Media Insights API does not support the impressions, replies metric for this media ..."
_DOES_NOT_SUPPORT = re.compile(r"does not support the (.+?) metrics? ", re.IGNORECASE)
# "(#100) The metric shares is not supported for this media type"
_IS_NOT_SUPPORTED = re.compile(r"\bthe metrics? (.+?) (?:is|are) not supported", re.IGNORECASE)
# "(#100) Starting from version 22 and above, the impressions metric is no longer supported for ..."
_NO_LONGER = re.compile(r"\bthe (.+?) metrics? (?:is|are) no longer supported", re.IGNORECASE)
# "(#100) metric[0] must be one of the following values: reach, follower_count, ..."
_MUST_BE_ONE_OF = re.compile(r"metric\[(\d+)\] must be one of the following values:\s*(.+)", re.IGNORECASE)
# "(#100) The following metrics (views) should be specified with parameter metric_type=total_value"
_NEEDS_TOTAL_VALUE = re.compile(
    r"following metrics? \(([^)]*)\) should be specified with parameter metric_type=total_value",
    re.IGNORECASE)
# "(#100) The following metric (follower_count) is incompatible with the metric type (total_value)"
_REJECTS_TOTAL_VALUE = re.compile(
    r"following metrics? \(([^)]*)\) (?:is|are) incompatible with the metric type \(total_value\)",
    re.IGNORECASE)
_RANGE_TOO_LONG = re.compile(r"There cannot be more than \d+ days", re.IGNORECASE)
# "(#10) Not enough viewers for the media to show insights"; other wordings ("does not have enough viewers")
# must not turn a per-story data threshold into an account-wide permission failure.
_NOT_ENOUGH_VIEWERS = re.compile(r"\benough viewers\b", re.IGNORECASE)
# 2108006 is matched by subcode; this text (title or message, any capitalisation) is the fallback for a
# body without the subcode or an answer that only carries it in WWW-Authenticate (reference §3.2).
_PRE_CONVERSION_TEXT = re.compile(r"before (?:the most recent time that the user's account was converted|"
                                  r"business account conversion)", re.IGNORECASE)
# WWW-Authenticate: OAuth "Facebook Platform" "invalid_token" "Error validating access token: ..."
_WWW_AUTHENTICATE = re.compile(r'^\s*OAuth\s+"[^"]*"\s+"([^"]*)"\s+"(.*)"\s*$', re.IGNORECASE | re.DOTALL)
_CODE_IN_MESSAGE = re.compile(r"^\(#(\d+)\)")


def classify(
    http_status: int,
    body: bytes | Mapping[str, Any] | None,
    *,
    regain_s: float | None = None,
    requested_metrics: Iterable[str] | None = None,
    www_authenticate: str | None = None,
) -> exceptions.GraphError:
    """The exception for a failed Graph call.

    `body` is the raw response body (or its decoded JSON object); `regain_s` is Meta's estimate of when a
    throttled scope may call again (from X-Business-Use-Case-Usage), kept on the error for the retry policy.
    `requested_metrics` (the call's `metric` list) lets "metric[0] must be one of ..." name the metric that
    was rejected, since that message only lists the allowed ones. `www_authenticate` (the response header)
    stands in for a missing error body: Meta repeats the error there.
    """
    decoded = _decode(body)
    error = _classify(http_status, decoded, regain_s=regain_s, requested_metrics=requested_metrics,
                      www_authenticate=www_authenticate)
    data = decoded.get("data") if isinstance(decoded, Mapping) else None
    if isinstance(data, list) and data:
        # Data beside the error (a 200 page whose JSON also holds an "error" object): kept on the error, so
        # what was fetched is stored whatever the error means (docs/errors.md).
        error.partial = [item for item in data if isinstance(item, dict)]
    return error


def _classify(http_status: int, decoded: object, *, regain_s: float | None,
              requested_metrics: Iterable[str] | None,
              www_authenticate: str | None) -> exceptions.GraphError:
    error_obj = decoded.get("error") if isinstance(decoded, Mapping) else None
    if not isinstance(error_obj, Mapping) and 400 <= http_status < 500 and www_authenticate:
        error_obj = _envelope_from_header(www_authenticate)
    if not isinstance(error_obj, Mapping):
        if http_status == 429:
            # Too Many Requests without Meta's envelope is still a throttle: pause, do not hammer.
            return exceptions.Throttled(f"HTTP {http_status} without a Graph error body",
                                        http_status=http_status, regain_s=regain_s)
        if http_status >= 500:
            return exceptions.ServerError(f"HTTP {http_status} without a Graph error body",
                                          http_status=http_status, regain_s=regain_s)
        if decoded is None:
            return exceptions.GraphTransportError(
                f"HTTP {http_status} with an unreadable body (not JSON, or truncated)",
                http_status=http_status)
        return exceptions.GraphApiError(f"HTTP {http_status} without a Graph error body",
                                        http_status=http_status, regain_s=regain_s)
    envelope: Mapping[str, Any] = error_obj

    code = _as_int(envelope.get("code"))
    subcode = _as_int(envelope.get("error_subcode"))
    message = redaction.redact(str(envelope.get("message") or "").strip()) or None
    fields: dict[str, Any] = {
        "http_status": http_status,
        "code": code,
        "subcode": subcode,
        "fbtrace_id": _as_str(envelope.get("fbtrace_id")),
        "is_transient": envelope.get("is_transient") is True,
        "regain_s": regain_s,
    }
    text = message or ""

    if code in THROTTLE_CODES:
        return exceptions.Throttled(message, **fields)
    if code in TOKEN_CODES:
        return exceptions.TokenInvalid(message, **fields)
    if fields["is_transient"] or code in TRANSIENT_CODES:
        return exceptions.ServerError(message, **fields)
    if code == 10:
        if _NOT_ENOUGH_VIEWERS.search(text):
            return exceptions.NotEnoughViewers(message, **fields)
        return exceptions.PermissionDenied(message, **fields)
    # 3: "Application does not have the capability to make this API call"; 200-299: permission errors.
    if code == 3 or (code is not None and 200 <= code <= 299):
        return exceptions.PermissionDenied(message, **fields)
    if code == 100:
        return _classify_100(message, text, fields, requested_metrics, envelope)
    if http_status >= 500:
        return exceptions.ServerError(message, **fields)
    return exceptions.GraphApiError(message, **fields)


def _classify_100(message: str | None, text: str, fields: dict[str, Any],
                  requested_metrics: Iterable[str] | None,
                  envelope: Mapping[str, Any]) -> exceptions.GraphError:
    subcode = fields["subcode"]
    if subcode == SUBCODE_PRE_CONVERSION or (subcode is None and any(
            _PRE_CONVERSION_TEXT.search(str(envelope.get(key) or ""))
            for key in ("error_user_title", "error_user_msg", "message"))):
        return exceptions.PreConversionMedia(message, **fields)
    if subcode == SUBCODE_OBJECT_NOT_FOUND:
        return exceptions.ObjectNotFound(message, **fields)
    if m := _NEEDS_TOTAL_VALUE.search(text):
        return exceptions.MetricTypeRequired(message, metrics=_metric_names(m.group(1)),
                                             needs_total_value=True, **fields)
    if m := _REJECTS_TOTAL_VALUE.search(text):
        return exceptions.MetricTypeRequired(message, metrics=_metric_names(m.group(1)),
                                             needs_total_value=False, **fields)
    if m := _MUST_BE_ONE_OF.search(text):
        allowed = _metric_names(m.group(2))
        requested = [name.strip() for name in requested_metrics or () if name.strip()]
        rejected = {name for name in requested if name not in allowed}
        index = int(m.group(1))
        if not rejected and index < len(requested):
            rejected = {requested[index]}
        return exceptions.UnsupportedMetric(message, metrics=frozenset(rejected), allowed=allowed, **fields)
    for pattern in (_DOES_NOT_SUPPORT, _IS_NOT_SUPPORTED, _NO_LONGER):
        # A match that names no metric ("the metric type X is not supported") is not about metrics.
        if (m := pattern.search(text)) and (names := _metric_names(m.group(1))):
            return exceptions.UnsupportedMetric(message, metrics=names, **fields)
    if _RANGE_TOO_LONG.search(text):
        return exceptions.RangeTooLong(message, **fields)
    return exceptions.InvalidParameter(message, **fields)


def _envelope_from_header(value: str) -> dict[str, Any] | None:
    """An error envelope read from `WWW-Authenticate: OAuth "Facebook Platform" "<error>" "<message>"`:
    the code from the message's `(#N)` prefix, or 190 for `invalid_token`."""
    match = _WWW_AUTHENTICATE.match(value)
    if match is None:
        return None
    kind, message = match.group(1), match.group(2)
    code_match = _CODE_IN_MESSAGE.match(message)
    code = int(code_match.group(1)) if code_match else (190 if kind == "invalid_token" else None)
    if code is None and _PRE_CONVERSION_TEXT.search(message):
        code = 100
    return {"message": message, "code": code} if code is not None else None


def _decode(body: bytes | Mapping[str, Any] | None) -> object:
    """The decoded JSON of `body`, or None when there is no body or it is not JSON (e.g. truncated)."""
    if body is None or isinstance(body, Mapping):
        return body
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _metric_names(listing: str) -> frozenset[str]:
    """Metric names from Meta's comma list ("impressions, replies", "a, b and c"), garbage dropped."""
    names = re.split(r",|\band\b", listing.strip().rstrip("."))
    return frozenset(name.strip() for name in names if _METRIC_NAME.fullmatch(name.strip()))


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
