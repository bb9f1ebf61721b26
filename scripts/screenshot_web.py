"""The README's screenshot of the web UI: a demo-sized world collected by the real daemon for a few minutes.

    .venv/bin/python scripts/screenshot_web.py [--minutes 6] [--out docs/img] [--dsn postgresql://...]

Starts the simulator in this process (40 accounts, some with invalid tokens, a per-account call budget so
that throttling shows), the daemon (`python -m collector run`) with a schedule compressed to minutes on a
scratch database (dropped at the end), waits `--minutes` so the call charts have history, then saves
overview.png, accounts.png and account.png from Debian's chromium (Playwright; never a downloaded browser).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import urllib.parse
import uuid
from pathlib import Path

import asyncpg
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.async_api import async_playwright

from collector.simulator import api, limits, server
from collector.simulator import world as world_mod

ROOT = Path(__file__).resolve().parent.parent

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, base_url: str, dsn: str, port: int, world: world_mod.World) -> Path:
    rows = ["ig_user_id,login,access_token"] + [f"{a.ig_user_id},{a.login},{a.access_token}"
                                                 for a in world.accounts()]
    (directory / "accounts.csv").write_text("\n".join(rows) + "\n")
    path = directory / "config.toml"
    path.write_text(f"""accounts_file = "accounts.csv"
state_dir = "state"
[database]
url = "{dsn}"
[graph]
instagram_base_url = "{base_url}"
facebook_base_url = "{base_url}"
[rate_limit]
account_calls_per_s = 2.0
[collect]
account_backfill_days = 30
[schedule]
media_discovery_interval_s = 120.0
stories_interval_s = 60.0
profile_interval_s = 300.0
demographics_interval_s = 600.0
job_retry_base_s = 30.0
[log]
level = "warning"
json = true
[http]
listen = "127.0.0.1:{port}"
""")
    return path


async def main(args: argparse.Namespace, work: Path, out: Path) -> int:
    dsn = args.dsn or os.environ.get("TEST_DATABASE_URL") or "postgresql://root@127.0.0.1:5432/test"
    name = f"shots_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    scratch = urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path=f"/{name}"))
    world = world_mod.World(5, 40, 25, invalid_token_fraction=0.05, history_days=60)
    options = api.Options(account_budget=limits.Budget(calls=60, window_s=60.0, block_s=20.0),
                          refresh_min_age_s=0.0)
    runner = web.AppRunner(server.make_app(world, options), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    port = free_port()
    config = write_config(work, base_url, scratch, port, world)
    log = work.joinpath("daemon.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "collector", "run", "-c", str(config),
                                                cwd=ROOT, stdout=log, stderr=log)
    try:
        print(f"daemon on http://127.0.0.1:{port}/ for {args.minutes} min", flush=True)
        await asyncio.sleep(args.minutes * 60)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            some = next(a.ig_user_id for a in world.accounts())
            for file, path in (("overview.png", "/"), ("accounts.png", "/accounts?limit=25"),
                               ("account.png", f"/accounts/{some}")):
                await page.goto(f"http://127.0.0.1:{port}{path}")
                await page.wait_for_load_state("networkidle")
                await page.screenshot(path=str(out / file), full_page=file != "accounts.png")
                print(f"saved {out / file}", flush=True)
            await browser.close()
    finally:
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 30)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        log.close()
        await runner.cleanup()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--work", default=str(ROOT / ".screenshots"))
    parser.add_argument("--dsn", default=None)
    arguments = parser.parse_args()
    work_dir, out_dir = Path(arguments.work).resolve(), Path(arguments.out)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main(arguments, work_dir, out_dir)))
