"""classify(): Meta's error envelopes (graph-api.md §1.3, §2.3, §2.4, §3.2, §6.3, §7) -> exception tree."""

from __future__ import annotations

import orjson
import pytest

from collector import exceptions, graph_errors


def envelope(message: str, code: int, *, subcode: int | None = None, type_: str = "OAuthException",
             **extra: object) -> bytes:
    error: dict[str, object] = {"message": message, "type": type_, "code": code, "fbtrace_id": "AbC123"}
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(extra)
    return orjson.dumps({"error": error})


# -- throttles: whatever the HTTP status ---------------------------------------------------------------------

THROTTLES = [
    (4, "(#4) Application request limit reached", "app"),
    (17, "(#17) User request limit reached", "user"),
    (32, "(#32) Page request limit reached", "account"),
    (613, "(#613) Calls to this api have exceeded the rate limit.", "account"),
    (341, "(#341) Application limit reached", "app"),
    (80001, "(#80001) There have been too many calls to this Page account. Wait a bit and try again.",
     "account"),
    (80002, "(#80002) There have been too many calls to this Instagram account. Wait a bit and try again. "
            "For more info, please refer to https://developers.facebook.com/docs/graph-api/overview/"
            "rate-limiting.", "account"),
]


@pytest.mark.parametrize("http_status", [400, 403, 429])
@pytest.mark.parametrize(("code", "message", "scope"), THROTTLES)
def test_throttle_codes_whatever_the_status(http_status: int, code: int, message: str, scope: str) -> None:
    error = graph_errors.classify(http_status, envelope(message, code), regain_s=120.0)
    assert type(error) is exceptions.Throttled
    assert error.code == code and error.http_status == http_status
    assert error.scope == scope
    assert error.regain_s == 120.0
    assert error.fbtrace_id == "AbC123"


def test_throttle_subcode_kept() -> None:
    error = graph_errors.classify(400, envelope("(#613) Calls to this api have exceeded the rate limit.", 613,
                                                subcode=1996))
    assert isinstance(error, exceptions.Throttled) and error.subcode == 1996


# -- tokens --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subcode", [None, 458, 459, 460, 463, 464, 467, 492])
def test_token_errors_keep_subcode(subcode: int | None) -> None:
    body = envelope("Error validating access token: Session has expired on Tuesday, 01-Dec-25 06:00:00 PST. "
                    "The current time is Tuesday, 01-Dec-25 06:07:02 PST.", 190, subcode=subcode)
    error = graph_errors.classify(400, body)
    assert type(error) is exceptions.TokenInvalid
    assert error.code == 190 and error.subcode == subcode
    assert "subcode" not in error.describe() or f"subcode={subcode}" in error.describe()


def test_code_102_is_a_token_error() -> None:
    assert type(graph_errors.classify(400, envelope("API Session", 102))) is exceptions.TokenInvalid


# -- permissions and thresholds ------------------------------------------------------------------------------

def test_not_enough_viewers() -> None:
    body = envelope("(#10) Not enough viewers for the media to show insights", 10)
    error = graph_errors.classify(400, body)
    assert type(error) is exceptions.NotEnoughViewers


@pytest.mark.parametrize(("code", "message"), [
    (10, "(#10) Application does not have permission for this action"),
    (200, "The calling app is missing the ads_management permission"),
    (299, "Requires extended permission"),
    (3, "Application does not have the capability to make this API call."),
])
def test_permission_denied(code: int, message: str) -> None:
    assert type(graph_errors.classify(403, envelope(message, code))) is exceptions.PermissionDenied


# -- code 100 family -----------------------------------------------------------------------------------------

def test_pre_conversion_media_exact_body() -> None:
    body = (b'{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,'
            b'"error_data":{"blame_field_specs":[[""]]},"error_subcode":2108006,"is_transient":false,'
            b'"error_user_title":"Media posted before business account conversion",'
            b'"error_user_msg":"The media was posted before the most recent time that the user\'s account '
            b'was converted to a business account from a personal account.",'
            b'"fbtrace_id":"AsEo4TGbJgj894OcT7XaCFL"}}')
    error = graph_errors.classify(400, body)
    assert type(error) is exceptions.PreConversionMedia
    assert error.subcode == 2108006 and error.fbtrace_id == "AsEo4TGbJgj894OcT7XaCFL"


def test_pre_conversion_matched_by_subcode_not_text() -> None:
    body = envelope("Something else entirely", 100, subcode=2108006,
                    error_user_title="Media Posted Before Business Account Conversion")
    assert type(graph_errors.classify(400, body)) is exceptions.PreConversionMedia


def test_object_not_found() -> None:
    body = envelope("Unsupported get request. Object with ID '17841400000000001' does not exist, cannot be "
                    "loaded due to missing permissions, or does not support this operation. Please read the "
                    "Graph API documentation at https://developers.facebook.com/docs/graph-api", 100,
                    subcode=33, type_="GraphMethodException")
    error = graph_errors.classify(400, body)
    assert type(error) is exceptions.ObjectNotFound and error.subcode == 33


def test_unsupported_metrics_for_product_type() -> None:
    body = envelope("(#100) The Media Insights API does not support the impressions, replies metric for "
                    "this media product type.", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.UnsupportedMetric)
    assert error.metrics == {"impressions", "replies"} and error.allowed is None


def test_unsupported_single_metric_views() -> None:
    body = envelope("(#100) The Media Insights API does not support the views metric for this media "
                    "product type.", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.UnsupportedMetric) and error.metrics == {"views"}


def test_metric_not_supported_for_media_type() -> None:
    body = envelope("(#100) The metric shares is not supported for this media type", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.UnsupportedMetric) and error.metrics == {"shares"}


def test_deprecated_since_v22() -> None:
    body = envelope("(#100) Starting from version 22 and above, the impressions metric is no longer "
                    "supported for the queried user. Please refer to the documentation at https://developers.facebook.com"
                    "/docs/instagram-api/reference/ig-user/insights for a list of supported metrics.", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.UnsupportedMetric) and error.metrics == {"impressions"}


def test_must_be_one_of_lists_allowed_and_names_rejected() -> None:
    body = envelope("(#100) metric[1] must be one of the following values: reach, saved, likes, comments, "
                    "shares, total_interactions, views", 100)
    error = graph_errors.classify(400, body, requested_metrics=["reach", "plays", "views"])
    assert isinstance(error, exceptions.UnsupportedMetric)
    assert error.allowed == {"reach", "saved", "likes", "comments", "shares", "total_interactions", "views"}
    assert error.metrics == {"plays"}


def test_must_be_one_of_without_request_context() -> None:
    body = envelope("(#100) metric[0] must be one of the following values: reach, views", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.UnsupportedMetric)
    assert error.metrics == frozenset() and error.allowed == {"reach", "views"}


def test_metric_type_total_value_required() -> None:
    body = envelope("(#100) The following metrics (views) should be specified with parameter "
                    "metric_type=total_value", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.MetricTypeRequired)
    assert error.metrics == {"views"} and error.needs_total_value is True


def test_metric_type_total_value_required_several() -> None:
    body = envelope("(#100) The following metrics (views, profile_views, accounts_engaged) should be "
                    "specified with parameter metric_type=total_value", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.MetricTypeRequired)
    assert error.metrics == {"views", "profile_views", "accounts_engaged"}


def test_total_value_incompatible() -> None:
    body = envelope("(#100) The following metric (follower_count) is incompatible with the metric type "
                    "(total_value)", 100)
    error = graph_errors.classify(400, body)
    assert isinstance(error, exceptions.MetricTypeRequired)
    assert error.metrics == {"follower_count"} and error.needs_total_value is False


def test_range_too_long() -> None:
    body = envelope("(#100) There cannot be more than 30 days (2592000 s) between since and until", 100)
    assert type(graph_errors.classify(400, body)) is exceptions.RangeTooLong


@pytest.mark.parametrize("message", [
    "(#100) (follower_count) metric only supports querying data for the last 30 days excluding the current "
    "day",
    "Invalid parameter",
    "(#100) The metric type total_value is not supported here",  # names no metric: not an UnsupportedMetric
])
def test_other_100_is_invalid_parameter(message: str) -> None:
    assert type(graph_errors.classify(400, envelope(message, 100))) is exceptions.InvalidParameter


# -- transient -----------------------------------------------------------------------------------------------

def test_code_1_unknown_error() -> None:
    error = graph_errors.classify(500, envelope("An unknown error occurred", 1))
    assert type(error) is exceptions.ServerError and error.code == 1


def test_code_2_is_transient() -> None:
    body = envelope("An unexpected error has occurred. Please retry your request later.", 2,
                    is_transient=True)
    error = graph_errors.classify(500, body)
    assert type(error) is exceptions.ServerError and error.is_transient


def test_is_transient_flag_wins_over_code() -> None:
    error = graph_errors.classify(400, envelope("Temporary", 100, is_transient=True))
    assert type(error) is exceptions.ServerError


def test_reduce_amount_of_data() -> None:
    body = envelope("Please reduce the amount of data you're asking for, then retry your request", 1)
    assert type(graph_errors.classify(500, body)) is exceptions.ServerError


@pytest.mark.parametrize("body", [None, b"<html>502 Bad Gateway</html>", b""])
def test_5xx_without_envelope_is_server_error(body: bytes | None) -> None:
    error = graph_errors.classify(502, body)
    assert type(error) is exceptions.ServerError and error.http_status == 502


@pytest.mark.parametrize("body", [b'{"error":{"message":"(#100) Inva', b"not json", b"", None])
def test_unreadable_4xx_body_is_transport_error(body: bytes | None) -> None:
    assert type(graph_errors.classify(400, body)) is exceptions.GraphTransportError


def test_decoded_dict_body_accepted() -> None:
    error = graph_errors.classify(400, {"error": {"message": "x", "code": 190, "error_subcode": "463"}})
    assert type(error) is exceptions.TokenInvalid and error.subcode == 463


def test_json_without_envelope_is_api_error() -> None:
    error = graph_errors.classify(404, b'{"detail": "no"}')
    assert type(error) is exceptions.GraphApiError


def test_message_is_redacted() -> None:
    body = envelope("Bad https://graph.instagram.com/v24.0/me?access_token=IGAAsecretsecretsecret1234", 100)
    error = graph_errors.classify(400, body)
    assert "IGAAsecret" not in str(error) and "IGAAsecret" not in error.describe()
