"""jobs.bounded: after the first error no new item starts, the items in flight finish (what they fetched is
not cancelled away), and an account-level Graph error outranks the others."""

from __future__ import annotations

import asyncio

import pytest

from collector import exceptions, jobs


async def test_items_in_flight_finish_after_an_error_and_no_new_item_starts() -> None:
    started: list[int] = []
    finished: list[int] = []
    all_started, failed = asyncio.Event(), asyncio.Event()

    async def work(item: int) -> None:
        started.append(item)
        if len(started) == 3:
            all_started.set()
        if item == 0:  # fails once the other two workers hold an item each
            await all_started.wait()
            failed.set()
            raise exceptions.GraphTransportError("boom")
        await failed.wait()
        finished.append(item)

    with pytest.raises(exceptions.GraphTransportError):
        await jobs.bounded(range(10), work, 3)
    assert sorted(finished) == [1, 2]  # in flight when item 0 failed: they finished, not cancelled
    assert sorted(started) == [0, 1, 2]  # and no new item started after the error


async def test_an_account_level_error_outranks_an_earlier_one() -> None:
    second_started, first_failed = asyncio.Event(), asyncio.Event()

    async def work(item: int) -> None:
        if item == 0:
            await second_started.wait()
            first_failed.set()
            raise exceptions.ServerError("transient", code=2)
        second_started.set()
        await first_failed.wait()
        raise exceptions.TokenInvalid("Invalid OAuth access token.", code=190)

    with pytest.raises(exceptions.TokenInvalid):
        await jobs.bounded(range(2), work, 2)


@pytest.mark.parametrize(("error", "reason"), [
    (exceptions.PermissionDenied("(#10) Application does not have permission for this action", code=10),
     "permission_denied"),
    (exceptions.NotEnoughViewers("(#10) Not enough viewers for the media to show insights", code=10),
     "not_enough_viewers"),
    (exceptions.PreConversionMedia("Invalid parameter", code=100, subcode=2108006),
     "posted_before_business_conversion"),
    (exceptions.ObjectNotFound("Unsupported get request.", code=100, subcode=33), "object_not_found"),
    (exceptions.GraphApiError("(#9999) new", code=9999), "graph_error"),
    (exceptions.TokenInvalid("Invalid OAuth access token.", code=190), None),
    (exceptions.Throttled("(#80002) too many calls", code=80002), None),
    (exceptions.ServerError("An unknown error occurred", code=1), None),
])
def test_a_media_error_is_the_media_s_unless_it_is_the_token_s_or_a_fault(
        error: exceptions.GraphError, reason: str | None) -> None:
    assert jobs.object_reason(error) == reason
