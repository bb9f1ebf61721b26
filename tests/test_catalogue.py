"""The metric catalogue: current defaults, login-only metrics, overrides and learned refusals."""

import asyncio

import pytest

from collector import catalogue


def test_defaults_hold_no_deprecated_metric() -> None:
    every = [m for ms in catalogue.MEDIA_METRICS.values() for m in ms] + list(catalogue.ACCOUNT_TOTAL_VALUE)
    assert not set(every) & catalogue.DEPRECATED


def test_facebook_only_metrics_are_not_asked_on_instagram_login() -> None:
    cat = catalogue.Catalogue()
    assert "total_likes" in cat.media_metrics("facebook", "FEED")
    assert not set(cat.media_metrics("instagram", "FEED")) & catalogue.FACEBOOK_LOGIN_ONLY
    assert "navigation" in cat.media_metrics("instagram", "STORY")
    assert "ig_reels_avg_watch_time" in cat.media_metrics("instagram", "REELS")


def test_overrides_replace_a_set() -> None:
    cat = catalogue.Catalogue({"media.REELS": ("reach", "views")})
    assert cat.media_metrics("instagram", "REELS") == ("reach", "views")
    assert catalogue.validate_overrides({"media.REELS": ["plays"], "media.BOGUS": []}) == [
        "media.REELS: deprecated metrics Meta rejects: plays",
        "unknown key 'media.BOGUS' (expected one of account.demographics, account.time_series, "
        "account.total_value, media.FEED, media.REELS, media.STORY)",
    ]


def test_product_type_derived_when_meta_omits_it() -> None:
    assert catalogue.product_type_of(None, "VIDEO") == "REELS"
    assert catalogue.product_type_of(None, "CAROUSEL_ALBUM") == "FEED"
    assert catalogue.product_type_of("STORY", "IMAGE") == "STORY"
    assert catalogue.product_type_of("AD", "IMAGE") == "FEED"


def test_capabilities_remember_refusals_per_media_type() -> None:
    caps = catalogue.Capabilities()
    caps.learn(["shares"], "instagram", "FEED", "IMAGE")
    assert caps.usable(("reach", "shares"), "instagram", "FEED", "IMAGE") == ("reach",)
    assert caps.usable(("reach", "shares"), "instagram", "FEED", "CAROUSEL_ALBUM") == ("reach", "shares")


async def test_a_held_up_first_call_does_not_hold_up_the_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first call of a kind is stuck (its account paused by Meta for an hour): the others go on after
    # PROBE_WAIT_S instead of waiting for it.
    monkeypatch.setattr(catalogue, "PROBE_WAIT_S", 0.01)
    capabilities = catalogue.Capabilities()
    held = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with capabilities.first_call("facebook", "FEED", "IMAGE"):
            held.set()
            await release.wait()

    holder = asyncio.create_task(first())
    await held.wait()
    async with capabilities.first_call("facebook", "FEED", "IMAGE"):
        assert not holder.done()
    release.set()
    await holder
