"""`ig-collector simulate` (and `python -m collector.simulator`): serve the fake Graph API until SIGINT or
SIGTERM.

    add_arguments(parser)   the flags (world shape, knobs, budgets, faults, latency)
    run(args) -> int        serves; prints `listening on http://HOST:PORT` (flushed) once ready
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from collector import eventloop
from collector.simulator import api, faults, limits, server
from collector.simulator import world as world_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file")
    parser.add_argument("--write-accounts", type=Path, metavar="CSV",
                        help="write ig_user_id,login,access_token for every account")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--media", type=int, default=30, help="media per account")
    parser.add_argument("--api-version", default="v24.0", help="echoed for unversioned paths")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter", type=float, default=0.5, help="± fraction of --latency-ms")
    knobs = world_mod.Knobs()
    world = parser.add_argument_group("world knobs")
    for name in ("invalid_token_fraction", "empty_page_fraction", "low_follower_fraction",
                 "pre_conversion_fraction", "media_count_underreport_fraction", "hidden_likes_fraction",
                 "few_viewers_fraction", "crosspost_fraction"):
        world.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(knobs, name))
    world.add_argument("--history-days", type=int, default=knobs.history_days)
    world.add_argument("--omit-media-product-type-on-instagram", action="store_true",
                       help="Instagram Login: leave media_product_type out of media answers")
    world.add_argument("--refuse-media-product-type-on-instagram", action="store_true",
                       help="Instagram Login: answer a media_product_type field request with code 100")
    world.add_argument("--views-as-total-value", action="store_true")
    world.add_argument("--accept-shares-on-image", action="store_true",
                       help="disable the observed drift that IMAGE posts reject `shares`")
    world.add_argument("--demographics-timeframe-key", action="store_true")
    budgets = parser.add_argument_group("rate-limit budgets (0 calls = off)")
    for scope in ("account", "app", "user"):
        help_text = "calls per rolling window" + (
            " of each Facebook user (POST /__sim/users), over every call made with its user tokens: "
            "code 17 past it" if scope == "user" else "")
        budgets.add_argument(f"--{scope}-calls", type=int, default=0, help=help_text)
        budgets.add_argument(f"--{scope}-window-s", type=float, default=3600.0)
        budgets.add_argument(f"--{scope}-block-s", type=float, default=60.0)
    budgets.add_argument("--throttle-status", type=int, default=400, choices=(400, 403, 429))
    budgets.add_argument("--usage-after-calls", type=int, default=0,
                         help="usage headers only from each scope's N+1-th answer on")
    budgets.add_argument("--usage-lag-calls", type=int, default=0,
                         help="usage headers report each scope's usage as it was N answers earlier")
    budgets.add_argument("--refresh-min-age-s", type=float, default=86400.0)
    fault = parser.add_argument_group("fault injection (fractions of calls, deterministic from --seed)")
    for kind in faults.KINDS:
        fault.add_argument(f"--fault-{kind.replace('_', '-')}", type=float, default=0.0)
    fault.add_argument("--slow-delay-s", type=float, default=5.0)


def build(args: argparse.Namespace) -> tuple[world_mod.World, api.Options]:
    world = world_mod.World(
        args.seed, args.accounts, args.media,
        invalid_token_fraction=args.invalid_token_fraction, empty_page_fraction=args.empty_page_fraction,
        low_follower_fraction=args.low_follower_fraction,
        pre_conversion_fraction=args.pre_conversion_fraction,
        media_count_underreport_fraction=args.media_count_underreport_fraction,
        hidden_likes_fraction=args.hidden_likes_fraction, few_viewers_fraction=args.few_viewers_fraction,
        crosspost_fraction=args.crosspost_fraction, history_days=args.history_days,
        omit_media_product_type_on_instagram=args.omit_media_product_type_on_instagram,
        refuse_media_product_type_on_instagram=args.refuse_media_product_type_on_instagram,
        views_as_total_value=args.views_as_total_value,
        reject_shares_on_image=not args.accept_shares_on_image,
        demographics_timeframe_key=args.demographics_timeframe_key,
    )
    options = api.Options(
        default_version=args.api_version, latency_ms=args.latency_ms, latency_jitter=args.latency_jitter,
        account_budget=limits.Budget(args.account_calls, args.account_window_s, args.account_block_s),
        app_budget=limits.Budget(args.app_calls, args.app_window_s, args.app_block_s),
        user_budget=limits.Budget(args.user_calls, args.user_window_s, args.user_block_s),
        throttle_status=args.throttle_status, refresh_min_age_s=args.refresh_min_age_s,
        usage_reporting=limits.Reporting(args.usage_after_calls, args.usage_lag_calls),
        faults=faults.FaultRates(slow_delay_s=args.slow_delay_s, **{
            kind: getattr(args, f"fault_{kind}") for kind in faults.KINDS}),
    )
    return world, options


def write_accounts(world: world_mod.World, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ig_user_id", "login", "access_token"])
        for account in world.accounts():
            writer.writerow([account.ig_user_id, account.login, account.access_token])


async def serve_until_stopped(app: web.Application, host: str, port: int, *,
                              on_listening: Callable[[int], None], backlog: int = 128) -> None:
    """Serve `app` on host:port until SIGINT or SIGTERM; `on_listening` gets the bound port (port 0 picks
    a free one)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    await site.start()
    on_listening(runner.addresses[0][1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def serve(args: argparse.Namespace) -> int:
    world, options = build(args)
    if args.write_accounts:
        write_accounts(world, args.write_accounts)

    def listening(port: int) -> None:
        if args.port_file:
            args.port_file.write_text(f"{port}\n")
        print(f"listening on http://{args.host}:{port}", flush=True)

    await serve_until_stopped(server.make_app(world, options), args.host, args.port, on_listening=listening)
    return 0


def run(args: argparse.Namespace) -> int:
    # uvloop roughly halves the server's CPU per request, so benchmarks measure the client, not us.
    with eventloop.runner(True) as runner:
        return runner.run(serve(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ig-collector simulate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
