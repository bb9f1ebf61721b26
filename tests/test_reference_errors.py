"""Error answers an independent Graph fake (or Meta) may give that the simulator does not: classification
(pure) and the client's reaction over real HTTP (the scripted server of tests/test_graph_client.py)."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from collector import exceptions, graph_errors, jobs
from tests.test_graph_client import ACCOUNT_A, FakeGraph, assert_token_free, exception_text, fake, make_rig

__all__ = ["fake"]  # the fixture, imported so pytest finds it here

PRE_CONVERSION_MSG = ("The media was posted before the most recent time that the user's account was "
                      "converted to a business account from a personal account.")


def body(**error: object) -> bytes:
    return orjson.dumps({"error": {"type": "OAuthException", "fbtrace_id": "T", **error}})


@pytest.mark.parametrize("title", ["Media posted before business account conversion",
                                   "Media Posted Before Business Account Conversion",
                                   "MEDIA POSTED BEFORE BUSINESS ACCOUNT CONVERSION"])
def test_pre_conversion_without_subcode_matched_by_title_any_case(title: str) -> None:
    error = graph_errors.classify(400, body(message="Invalid parameter", code=100, error_user_title=title))
    assert isinstance(error, exceptions.PreConversionMedia)


def test_pre_conversion_without_subcode_matched_by_user_msg() -> None:
    error = graph_errors.classify(400, body(message="Invalid parameter", code=100,
                                            error_user_msg=PRE_CONVERSION_MSG))
    assert isinstance(error, exceptions.PreConversionMedia)


def test_plain_invalid_parameter_stays_invalid_parameter() -> None:
    error = graph_errors.classify(400, body(message="Invalid parameter", code=100))
    assert type(error) is exceptions.InvalidParameter


@pytest.mark.parametrize(("header", "kind", "code"), [
    ('OAuth "Facebook Platform" "invalid_request" "(#100) ' + PRE_CONVERSION_MSG + '"',
     exceptions.PreConversionMedia, 100),
    ('OAuth "Facebook Platform" "invalid_token" "Error validating access token: Session has expired on '
     'Tuesday, 01-Dec-25 06:00:00 PST."', exceptions.TokenInvalid, 190),
    ('OAuth "Facebook Platform" "insufficient_scope" "(#10) Application does not have permission for this '
     'action"', exceptions.PermissionDenied, 10),
    ('OAuth "Facebook Platform" "invalid_request" "(#80002) There have been too many calls to this '
     'Instagram account. Wait a bit and try again."', exceptions.Throttled, 80002),
])
def test_error_only_in_www_authenticate(header: str, kind: type[exceptions.GraphError], code: int) -> None:
    for empty in (b"", None, b"<html></html>"):
        error = graph_errors.classify(400, empty, www_authenticate=header)
        assert isinstance(error, kind) and error.code == code, (empty, error)


def test_body_envelope_wins_over_www_authenticate() -> None:
    error = graph_errors.classify(400, body(message="(#17) User request limit reached", code=17),
                                  www_authenticate='OAuth "Facebook Platform" "invalid_token" "x"')
    assert isinstance(error, exceptions.Throttled) and error.code == 17


@pytest.mark.parametrize("message", ["(#10) Not enough viewers for the media to show insights",
                                     "(#10) The media does not have enough viewers to show insights",
                                     "(#10) Not Enough Viewers"])
def test_not_enough_viewers_wordings(message: str) -> None:
    assert isinstance(graph_errors.classify(400, body(message=message, code=10)), exceptions.NotEnoughViewers)


def test_code_10_permission_stays_permission() -> None:
    error = graph_errors.classify(403, body(message="(#10) Application does not have permission for this "
                                                    "action", code=10))
    assert isinstance(error, exceptions.PermissionDenied)


@pytest.mark.parametrize("raw", [b"", b"Too Many Requests", b"<html>429</html>"])
def test_plain_429_is_a_throttle(raw: bytes) -> None:
    error = graph_errors.classify(429, raw)
    assert isinstance(error, exceptions.Throttled) and error.scope == "account"


@pytest.mark.parametrize(("subcode", "message", "status"), [
    (463, "Error validating access token: Session has expired on Tuesday, 01-Dec-25 06:00:00 PST.",
     "token_expired"),
    (None, "Error validating access token: Session has expired on Tuesday, 01-Dec-25 06:00:00 PST. The "
           "current time is Tuesday, 01-Dec-25 06:07:02 PST.", "token_expired"),
    (460, "Error validating access token: The session has been invalidated because the user changed their "
          "password or Facebook has changed the session for security reasons.", "token_invalid"),
    (None, "Invalid OAuth access token.", "token_invalid"),
])
def test_token_expired_vs_invalid(subcode: int | None, message: str, status: str) -> None:
    extra = {} if subcode is None else {"error_subcode": subcode}
    error = graph_errors.classify(400, body(message=message, code=190, **extra))
    assert jobs.account_failure_status(error) == status


def test_code_102_is_token_invalid_for_the_account() -> None:
    error = graph_errors.classify(400, body(message="Session key invalid", code=102))
    assert jobs.account_failure_status(error) == "token_invalid"


# -- over real HTTP ------------------------------------------------------------------------------------------

async def test_empty_400_with_www_authenticate_is_not_retried(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/555/insights"
    header = f'OAuth "Facebook Platform" "invalid_request" "(#100) Invalid parameter: {PRE_CONVERSION_MSG}"'

    async def respond(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, body=b"", headers={"WWW-Authenticate": header})

    server.on(path, respond, respond, respond)
    rig = make_rig(server, base)
    async with rig.client as client:
        with pytest.raises(exceptions.PreConversionMedia):
            await client.get(ACCOUNT_A, "555/insights", {"metric": "reach"}, endpoint="media_insights")
    assert len(server.paths(path)) == 1


async def test_plain_429_pauses_the_account_then_succeeds(fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001"

    async def too_many(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, text="Too Many Requests")

    server.on(path, too_many)
    rig = make_rig(server, base, throttle_base_delay_s=0.05, pause_cap_s=1.0)
    async with rig.client as client:
        answer = await client.get(ACCOUNT_A, "1001", endpoint="profile")
    assert answer["path"] == path
    hits = server.paths(path)
    assert len(hits) == 2 and hits[1].at - hits[0].at >= 0.1  # a throttle pause (2 x base), not a fast retry
    assert rig.metrics.total(rig.metrics.throttles, scope="account") == 1.0


@pytest.mark.parametrize("payload", [b"[]", b'[{"id": "1"}]', b"", b"null", b'"text"'])
async def test_200_that_is_not_an_object_is_retried_then_fails_token_free(
        fake: tuple[FakeGraph, str], payload: bytes) -> None:
    server, base = fake
    path = "/v24.0/1001/media"

    async def odd(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, body=payload, content_type="application/json")

    server.on(path, odd, odd, odd)
    rig = make_rig(server, base, max_attempts=3, base_delay_s=0.01)
    async with rig.client as client:
        with pytest.raises(exceptions.GraphTransportError) as caught:
            await client.get(ACCOUNT_A, "1001/media", endpoint="media")
    assert len(server.paths(path)) == 3
    assert_token_free(exception_text(caught.value))


async def test_reduce_the_amount_of_data_halves_the_page_limit_and_keeps_the_cursor(
        fake: tuple[FakeGraph, str]) -> None:
    server, base = fake
    path = "/v24.0/1001/media"
    too_much = "Please reduce the amount of data you're asking for, then retry your request"
    meta_next = "https://graph.instagram.com/v26.0/1001/media?limit=100&after=c1&fields=id"

    async def page(request: web.Request) -> web.StreamResponse:
        if int(request.query["limit"]) > 25:
            return web.json_response({"error": {"message": too_much, "code": 1, "type": "OAuthException"}},
                                     status=500)
        if request.query.get("after") == "c1":
            return web.json_response({"data": [{"id": "3"}]})
        return web.json_response({"data": [{"id": "1"}, {"id": "2"}], "paging": {"next": meta_next}})

    server.on(path, *(page for _ in range(20)))
    rig = make_rig(server, base, max_attempts=2, base_delay_s=0.01)
    pages = []
    async with rig.client as client:
        async for items in client.pages(ACCOUNT_A, "1001/media", {"fields": "id", "limit": "100"},
                                        endpoint="media"):
            pages.append([item["id"] for item in items])
    assert pages == [["1", "2"], ["3"]]
    limits = [hit.query["limit"] for hit in server.paths(path)]
    assert limits == ["100", "100", "50", "50", "25", "25"]  # 2 tries per size, then the cursor at 25
    assert server.paths(path)[-1].query["after"] == "c1"
