"""`ig-collector`: argparse subcommands, signal handling and exit codes.

Exit codes (stable; operators and systemd depend on them):
    0    every account collected
    1    the pass completed, but some accounts failed permanently (their status is recorded); for
         check-config a token has a problem, for discover a token's discovery failed, for token exchange
         Meta refused the exchange
    2    config or usage error (the message names the file, the key or line, and what is wrong)
    3    fatal: database unreachable, migration failed, or an internal error
    130  stopped by SIGINT, 143 by SIGTERM (after flushing everything already fetched)

Each subcommand imports what it needs when it runs, so `--help` stays fast and a module that fails to
import breaks only the subcommands that use it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import structlog

from collector import __version__, config, eventloop, exceptions, logs, metrics, progress, settings

if TYPE_CHECKING:  # imported where used, at run time (see the module docstring)
    from collector.storage import db

EXIT_OK = 0
EXIT_ACCOUNTS_FAILED = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
CONFIG_ENV = "IG_COLLECTOR_CONFIG"

log = structlog.get_logger("collector.cli")

Handler = Callable[[argparse.Namespace], int]


class Signals:
    """SIGTERM/SIGINT only request a stop (`stop` is set); a second signal cancels the main task, which
    still flushes (the writer's close is shielded). `exit_code` is 128 + the first signal's number."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.received: int | None = None
        self._task: asyncio.Task[Any] | None = None

    @property
    def exit_code(self) -> int | None:
        return None if self.received is None else 128 + self.received

    def install(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self._task = task
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self.received is None:
            self.received = signum
            log.warning("stop_requested", signal=signal.Signals(signum).name)
            self.stop.set()
        elif self._task is not None:
            log.warning("stop_forced", signal=signal.Signals(signum).name)
            self._task.cancel()


def run_async(main: Callable[[Signals], Awaitable[int]], *, use_uvloop: bool = True) -> int:
    """Run `main` on a fresh event loop (uvloop when available and wanted) with stop-on-signal handling."""
    signals = Signals()

    async def wrapper() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signals.install(loop, task)
        try:
            code = await main(signals)
        finally:
            signals.uninstall(loop)
        return signals.exit_code if signals.exit_code is not None else code

    with eventloop.runner(use_uvloop) as runner:
        try:
            return runner.run(wrapper())
        except asyncio.CancelledError:
            if signals.exit_code is None:
                raise
            return signals.exit_code


# -- subcommands -----------------------------------------------------------------------------------------


def _load(args: argparse.Namespace, *, require_accounts: bool = True) -> settings.Config:
    """Load the config, then (re)configure logging from it unless the command line said otherwise."""
    cfg = config.load(args.config, require_accounts=require_accounts)
    logs.configure(level=args.log_level or cfg.log.level,
                   json=args.log_json if args.log_json is not None else cfg.log.json)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print("\n".join(config.summary(cfg)))
    print("config ok")
    if args.no_token_check or not _token_checks_wanted(cfg):
        return EXIT_OK

    async def main(signals: Signals) -> int:
        checks = await _token_checks(cfg)
        problems = [line for check in checks for line in check.lines()]
        for check in checks:
            if check.not_checked and check.subject.metric_label.startswith("#"):
                print(f"{check.subject.label}: not checked: {check.not_checked}")
        print("\n".join(["token problems:", *(f"  {line}" for line in problems)]) if problems else
              f"tokens ok ({sum(1 for c in checks if c.not_checked is None)} checked with debug_token)")
        return EXIT_ACCOUNTS_FAILED if problems else EXIT_OK

    return run_async(main, use_uvloop=False)


def _token_checks_wanted(cfg: settings.Config) -> bool:
    from collector import token_tools  # noqa: PLC0415

    return token_tools.needs_calls(cfg)


async def _token_checks(cfg: settings.Config) -> list[Any]:
    """Every configured token checked with debug_token (collector/token_tools.py), logged as well."""
    from collector import graph, token_tools  # noqa: PLC0415

    async with graph.client_for(cfg, metrics.Metrics()) as client:
        checks = await token_tools.check_all(client, cfg)
    token_tools.report(checks)
    return checks


def cmd_discover(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if not cfg.tokens:
        print("no [[tokens]] configured: nothing to discover", file=sys.stderr)
        return EXIT_OK

    async def main(signals: Signals) -> int:
        from collector import discovery, graph  # noqa: PLC0415

        async with graph.client_for(cfg, metrics.Metrics()) as client:
            result = await discovery.discover(client, cfg.tokens, cfg.accounts)
        _print_discovery(result, csv_out=args.csv)
        return EXIT_ACCOUNTS_FAILED if result.failed else EXIT_OK

    return run_async(main, use_uvloop=not args.no_uvloop)


def _print_discovery(result: Any, *, csv_out: bool) -> None:
    """The accounts [[tokens]] reach (a table, or CSV in the accounts-file format without tokens), then
    the tokens that found nothing and why (on stderr with --csv, so stdout stays a valid accounts file)."""
    if csv_out:
        lines = ["# Discovered by ig-collector discover. access_token_env names the variable of the token",
                 "# that found the account; empty where the token was not given as an environment variable.",
                 "ig_user_id,login,access_token_env"]
        lines += [f"{f.account.ig_user_id},{f.account.login},{_env_of(result, f)}" for f in result.accounts]
        print("\n".join(lines))
    else:
        rows: list[tuple[object, ...]] = [
            (f.account.ig_user_id, f.username or "", f.account.login, f.account.source)
            for f in result.accounts]
        print(f"accounts to collect from [[tokens]]: {len(rows)}")
        if rows:
            print(_table(["ig_user_id", "username", "login", "found by"], rows))
    notes = [f"{o.token.label}: found nothing: {o.why_nothing()}" for o in result.outcomes if o.why_nothing()]
    if result.configured_wins:
        notes.append(f"{len(result.configured_wins)} discovered account(s) are also in [[accounts]] or the "
                     "accounts file, which win: " + ", ".join(result.configured_wins))
    notes += [f"{o.token.label}: skipped {note}" for o in result.outcomes for note in o.skipped]
    if notes:
        print(logs.redact("\n".join(notes)), file=sys.stderr if csv_out else sys.stdout)


def _env_of(result: Any, found: Any) -> str:
    token = next(o.token for o in result.outcomes if found in o.found)
    return str(token.env_name or "")


def cmd_token(args: argparse.Namespace) -> int:
    """`token exchange`: a short-lived token (stdin, or --token-env/--token-file; never argv) for a
    long-lived one, printed once to stdout."""
    from collector import token_tools  # noqa: PLC0415

    cfg = _load(args, require_accounts=False)
    problem = token_tools.exchange_settings_problem(cfg.app, args.login)
    if problem is not None:  # before the token is read: nobody pastes one for nothing
        raise exceptions.ConfigError(problem, source=str(cfg.source))
    short = _read_short_token(args)

    async def main(signals: Signals) -> int:
        from collector import graph  # noqa: PLC0415

        async with graph.client_for(cfg, metrics.Metrics()) as client:
            exchanged = await token_tools.exchange(client, cfg.app, args.login, short)
        sys.stdout.write(exchanged.token.reveal() + "\n")
        sys.stdout.flush()
        days = f"{exchanged.expires_in_s / 86400:.0f} days" if exchanged.expires_in_s else "an unknown time"
        print(f"ig-collector: long-lived {args.login} token printed on stdout; valid for {days}",
              file=sys.stderr)
        return EXIT_OK

    try:
        return run_async(main, use_uvloop=not args.no_uvloop)
    except exceptions.GraphError as exc:
        print(f"ig-collector: token exchange failed: {logs.redact(exc.describe())}", file=sys.stderr)
        return EXIT_ACCOUNTS_FAILED


def _read_short_token(args: argparse.Namespace) -> Any:
    from collector import models, redaction  # noqa: PLC0415

    if args.token_env:
        value = os.environ.get(args.token_env, "")
        where = f"environment variable {args.token_env}"
    elif args.token_file:
        try:
            value = args.token_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise exceptions.ConfigError(f"cannot read {args.token_file}: {exc.strerror}") from exc
        where = str(args.token_file)
    elif sys.stdin.isatty():
        import getpass  # noqa: PLC0415

        value = getpass.getpass("short-lived token (not echoed): ")
        where = "the terminal"
    else:
        value = sys.stdin.readline()
        where = "stdin"
    value = value.strip()
    if not value:
        raise exceptions.ConfigError(f"no token read from {where}")
    redaction.register_secret(value)
    return models.Secret(value)


def cmd_migrate(args: argparse.Namespace) -> int:
    cfg = _load(args)

    async def main(signals: Signals) -> int:
        from collector.storage import db  # noqa: PLC0415  # lazy: see module docstring

        async with await db.open_database(cfg.database, state_dir=cfg.state_dir) as database:
            applied = await _migrate(database)
        print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {name}" for name in applied))
        return EXIT_OK

    return run_async(main, use_uvloop=not args.no_uvloop)


async def _migrate(database: db.Database) -> list[str]:
    applied = await database.migrate()  # raises StorageError (exit 3)
    if applied:
        log.info("migrations_applied", names=applied)
    return applied


def cmd_once(args: argparse.Namespace) -> int:
    cfg = _load(args)

    async def main(signals: Signals) -> int:
        with eventloop.start_up():
            from collector.storage import db  # noqa: PLC0415

        display = progress.ProgressDisplay(log_interval_s=args.progress_interval_s)
        # The database is opened first and the pass's modules imported while the server sets the connection
        # up (a backend process to start; the embedded server to find or start, in a thread); the pass
        # starts only once the database is open and its migrations verified.
        opening = asyncio.ensure_future(db.open_database(cfg.database, state_dir=cfg.state_dir))
        await asyncio.sleep(0)  # the connection attempt leaves
        try:
            with eventloop.start_up():
                from collector import passes  # noqa: PLC0415
        except BaseException:
            await _abandon(opening)
            raise
        async with await opening as database:
            await _migrate(database)
            try:
                summary = await passes.run_pass(
                    cfg, database.pool, stop=signals.stop, metrics=metrics.Metrics(),
                    on_progress=None if args.no_progress else display)
            finally:
                display.close()
        _print_summary(summary)
        return int(summary.exit_code)

    return run_async(main, use_uvloop=not args.no_uvloop)


async def _abandon(opening: asyncio.Future[db.Database]) -> None:
    """Stop opening the database, or close it if it opened: the command failed meanwhile (its own error is
    the one reported)."""
    opening.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await (await opening).close()


def cmd_run(args: argparse.Namespace) -> int:
    _load(args)  # validate first: a bad config exits 2 before anything starts
    from collector import daemon  # noqa: PLC0415  # lazy: see module docstring

    return daemon.run(args.config, args)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from collector import status  # noqa: PLC0415

    async def main(signals: Signals) -> int:
        code = await status.main(cfg)
        if _token_checks_wanted(cfg):
            problems = [line for check in await _token_checks(cfg) for line in check.lines()]
            print("\n".join(["token problems:", *(f"  {line}" for line in problems)]) if problems else
                  "tokens ok")
        return code

    return run_async(main, use_uvloop=not args.no_uvloop)


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = _load(args)

    async def main(signals: Signals) -> int:
        from datetime import UTC, datetime  # noqa: PLC0415

        from collector.storage import db, retention  # noqa: PLC0415

        async with (await db.open_database(cfg.database, state_dir=cfg.state_dir) as database,
                    database.pool.acquire() as conn):
            actions = await retention.current_plan(conn, cfg.retention, datetime.now(UTC))
            if args.dry_run:
                outcomes = await retention.describe(conn, actions)
            else:
                outcomes = await retention.apply(conn, actions)
        print(retention.render(outcomes, policy=cfg.retention, dry_run=args.dry_run))
        return EXIT_OK

    return run_async(main, use_uvloop=not args.no_uvloop)


def cmd_db_size(args: argparse.Namespace) -> int:
    cfg = _load(args)

    async def main(signals: Signals) -> int:
        from datetime import UTC, datetime  # noqa: PLC0415

        from collector.storage import db, sizing  # noqa: PLC0415

        async with await db.open_database(cfg.database, state_dir=cfg.state_dir) as database:
            sizes = await sizing.measure(database.pool, datetime.now(UTC), window_days=args.days)
        print(sizing.render(sizes, window_days=args.days))
        return EXIT_OK

    return run_async(main, use_uvloop=not args.no_uvloop)


def cmd_simulate(args: argparse.Namespace) -> int:
    logs.configure(level=args.log_level or "info", json=args.log_json)
    from collector.simulator import cli as simulator_cli  # noqa: PLC0415

    return simulator_cli.run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    # Quiet by default: the progress line and the report are the show; warnings still come through.
    logs.configure(level=args.log_level or "warning", json=args.log_json)
    return run_async(lambda signals: _demo(args, signals), use_uvloop=not args.no_uvloop)


async def _demo(args: argparse.Namespace, signals: Signals) -> int:
    from aiohttp import web  # noqa: PLC0415  # lazy: see module docstring

    from collector import passes  # noqa: PLC0415
    from collector.simulator import api, server  # noqa: PLC0415
    from collector.simulator import world as sim_world  # noqa: PLC0415
    from collector.storage import db  # noqa: PLC0415

    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    world = sim_world.World(args.seed, args.accounts, args.media)
    runner = web.AppRunner(server.make_app(world, api.Options(latency_ms=args.latency_ms)), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        cfg = config.load(_write_demo_config(state_dir, base_url, world))
        print(f"simulator: {args.accounts} accounts x {args.media} media on {base_url} "
              f"(latency {args.latency_ms:g} ms)\ndatabase: {config.database_target(cfg)}\n"
              f"config: {cfg.source}", flush=True)
        async with await db.open_database(cfg.database, state_dir=cfg.state_dir) as database:
            await _migrate(database)
            display = progress.ProgressDisplay(log_interval_s=5.0)
            try:
                summary = await passes.run_pass(cfg, database.pool, stop=signals.stop,
                                                 metrics=metrics.Metrics(), on_progress=display)
            finally:
                display.close()
            await _print_demo_report(database.pool, summary)
    finally:
        await runner.cleanup()
    return EXIT_OK


def _write_demo_config(state_dir: Path, base_url: str, world: Any) -> Path:
    with (state_dir / "accounts.csv").open("w", encoding="utf-8") as f:
        f.write("ig_user_id,login,access_token\n")
        f.writelines(f"{a.ig_user_id},{a.login},{a.access_token}\n" for a in world.accounts())
    path = state_dir / "config.toml"
    path.write_text(f"""# Written by `ig-collector demo`: the local simulator stands in for Meta's Graph API.
accounts_file = "accounts.csv"
state_dir = "."

[graph]
instagram_base_url = "{base_url}"
facebook_base_url = "{base_url}"

[rate_limit]
# The simulator has no budgets; Meta's per-account pace (5/s) would only make the demo slow.
account_calls_per_s = 50.0
account_burst = 10
""", encoding="utf-8")
    return path


# Read-only presentation queries of the demo report (the collector's own queries live in storage).
_DEMO_STATUS_SQL = "SELECT status, count(*) AS accounts FROM ig_account GROUP BY status ORDER BY status"
_DEMO_ACCOUNTS_SQL = """SELECT ig_user_id, username, login, followers_count, media_count, status
FROM ig_account ORDER BY ig_user_id LIMIT 5"""
_DEMO_MEDIA_INSIGHTS_SQL = """SELECT i.media_id, m.media_product_type, i.metric, i.breakdown, i.dimension,
    i.value
FROM ig_media_insight i JOIN ig_media m USING (media_id)
WHERE i.media_id = (SELECT media_id FROM ig_media_insight ORDER BY media_id LIMIT 1)
ORDER BY i.metric, i.breakdown, i.dimension LIMIT 12"""
_DEMO_ACCOUNT_INSIGHTS_SQL = """SELECT ig_user_id, metric, period, end_time, breakdown, dimension, value
FROM ig_account_insight WHERE period = 'day' ORDER BY ig_user_id, end_time DESC, metric LIMIT 8"""
_DEMO_UNAVAILABLE_SQL = "SELECT reason, count(*) AS n FROM ig_unavailable GROUP BY reason ORDER BY n DESC"


async def _print_demo_report(pool: Any, summary: Any) -> None:
    from collector.storage import queries  # noqa: PLC0415

    counts: dict[str, int] = await queries.table_counts(pool)
    sections: list[tuple[str, list[str], list[tuple[object, ...]]]] = [
        # rows_written is the next section, from the database itself.
        ("pass", ["key", "value"], [(k, _flat(v)) for k, v in summary.as_dict().items()
                                    if k != "rows_written"]),
        ("rows stored", ["table", "rows"], list(counts.items())),
    ]
    async with pool.acquire() as conn:
        for title, sql in (("accounts by status", _DEMO_STATUS_SQL), ("sample accounts", _DEMO_ACCOUNTS_SQL),
                           ("sample media insights", _DEMO_MEDIA_INSIGHTS_SQL),
                           ("sample daily account insights", _DEMO_ACCOUNT_INSIGHTS_SQL),
                           ("unavailable data by reason", _DEMO_UNAVAILABLE_SQL)):
            records = await conn.fetch(sql)
            headers = list(records[0].keys()) if records else ["(none)"]
            sections.append((title, headers, [tuple(r.values()) for r in records]))
    out = [f"\n{title}\n{_table(headers, rows)}" for title, headers, rows in sections]
    print(logs.redact("\n".join(out)), flush=True)


def _flat(value: object) -> object:
    return ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value


def _table(headers: list[str], rows: list[tuple[object, ...]]) -> str:
    cells = [headers, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def _print_summary(summary: Any) -> None:
    data = summary.as_dict() if hasattr(summary, "as_dict") else vars(summary)
    option = orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0
    sys.stdout.write(logs.redact(orjson.dumps(data, default=str, option=option).decode()) + "\n")
    sys.stdout.flush()


# -- parser ----------------------------------------------------------------------------------------------

_COMMANDS: dict[str, tuple[Handler, str, str]] = {
    "once": (cmd_once, "run one collection pass over every account, then exit",
             "Migrate the database, collect every configured account once (profile, media, stories, "
             "media and account insights), write everything, print a summary and exit. Exit codes: 0 all "
             "accounts ok; 1 some accounts failed permanently; 2 config error; 3 database unreachable or "
             "migration failed; 143/130 after SIGTERM/SIGINT (work already fetched is flushed first)."),
    "run": (cmd_run, "run the collector as a daemon (systemd service)",
            "Keep every account fresh on its own schedule until SIGTERM/SIGINT (exit 0 after draining). "
            "SIGHUP reloads the config and the accounts file."),
    "migrate": (cmd_migrate, "apply pending database migrations and exit",
                "Apply the numbered migrations in sql/ that the database lacks, under an advisory lock "
                "(safe to run while a daemon starts); finish converting the history to a partitioned table "
                "when an upgrade started it (writers keep writing meanwhile), and create the history "
                "partitions of the current Pacific month and two ahead. Exit 3 when the database is "
                "unreachable or a migration fails."),
    "check-config": (cmd_check_config, "validate the config and print a short summary",
                     "Load and validate the config and its accounts file; print the number of accounts by "
                     "login and the database target (password masked). Tokens are never printed. Exit 2 "
                     "with a message naming the file and key or line when something is wrong. With [app] "
                     "app_id and app_secret, also check the Facebook tokens with debug_token and exit 1 when "
                     "one has a problem (--no-token-check skips this)."),
    "simulate": (cmd_simulate, "serve a fake Graph API for tests and demos",
                 "Serve a deterministic fake of Meta's Graph API (both hosts' path shapes, paging, metric "
                 "rules, error bodies, usage headers) over HTTP until interrupted."),
    "demo": (cmd_demo, "collect from a local simulator into PostgreSQL and show what was stored",
             "Start the simulator in-process, write a config pointing at it, open the database "
             "($DATABASE_URL if set, else an embedded PostgreSQL), migrate, run one pass with a live "
             "progress display and print a summary of the stored data."),
    "status": (cmd_status, "show each account's last success, status and next due time",
               "Read per-account and per-job state from the database and print it as a table; with [app] "
               "configured, also check the Facebook tokens with debug_token and list their problems; then "
               "the daemon instances sharing the database, what each holds and its lease counters. Exit 3 "
               "when the database is unreachable or not migrated."),
    "discover": (cmd_discover, "list the accounts the [[tokens]] reach, without collecting",
                 "Ask every [[tokens]] entry which Instagram accounts it reaches (Facebook Login: "
                 "/me/accounts, every page; Instagram Login: /me) and print what `once` and `run` would "
                 "collect from them, then the tokens that found nothing and why. Tokens are named by their "
                 "position in the config, never by their value. Exit 1 when a token's discovery failed."),
    "token": (cmd_token, "token lifecycle: exchange a short-lived token for a long-lived one",
              "token exchange --login facebook|instagram: read a short-lived token from stdin (or "
              "--token-env NAME / --token-file PATH; never from the command line, which `ps` shows), "
              "exchange it with Meta (Facebook: fb_exchange_token with [app] app_id and app_secret; "
              "Instagram: ig_exchange_token with [app] app_secret) and print the long-lived token once, on "
              "stdout only. Example: ig-collector token exchange --login facebook -c config.toml < short.txt "
              "> long.txt"),
    "prune": (cmd_prune, "apply the [retention] policy to the history now",
              "Drop the monthly history partitions entirely older than [retention] history_days, delete "
              "the default partition's rows older than that, and downsample partitions entirely older than "
              "history_full_days to each series' last value per Pacific day (the daemon does this daily). "
              "Prints what was done. Exit 3 when the database is unreachable or not migrated."),
    "db-size": (cmd_db_size, "print each table's rows, size, growth per day and 30/365-day projections",
                "Count each collector table's rows and bytes (indexes included), measure its growth per "
                "day from the rows added in the last --days days, and project 30 and 365 days ahead at "
                "that rate. Counting scans the tables. Exit 3 when the database is unreachable or not "
                "migrated."),
}
_WITH_CONFIG = ("once", "run", "migrate", "check-config", "status", "discover", "token", "prune", "db-size")
_WITH_LOOP = ("once", "run", "migrate", "status", "demo", "discover", "token", "prune", "db-size")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser. `command` is the subcommand about to run: only its extra arguments that live in
    other modules (the simulator's) are imported."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("logging")
    group.add_argument("--log-level", choices=("debug", "info", "warning", "error", "critical"),
                       help="log level (default: [log] level of the config, else info; demo: warning)")
    group.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                       help="JSON log lines on stderr (default: [log] json of the config, else JSON unless "
                            "stderr is a terminal)")

    parser = argparse.ArgumentParser(
        prog="ig-collector",
        description="Collect Instagram account and media insights from Meta's Graph API into PostgreSQL.",
        epilog="Exit codes: 0 ok, 1 some accounts failed (check-config: a token problem; discover: a "
               "discovery failed; token: Meta refused), 2 config/usage error, 3 fatal, 130/143 interrupted "
               "by SIGINT/SIGTERM (run: 0 after draining). Run 'ig-collector <command> --help' for details.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (handler, help_text, description) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description, parents=[common])
        p.set_defaults(handler=handler)
        if name in _WITH_CONFIG:
            default = os.environ.get(CONFIG_ENV)
            p.add_argument("-c", "--config", type=Path, default=Path(default) if default else None,
                           required=not default, metavar="PATH",
                           help=f"TOML config file (default: ${CONFIG_ENV})")
        if name in _WITH_LOOP:
            p.add_argument("--no-uvloop", action="store_true",
                           help="use the standard asyncio event loop instead of uvloop")
    _add_once_arguments(sub.choices["once"])
    _add_token_arguments(sub.choices)
    sub.choices["prune"].add_argument("--dry-run", action="store_true",
                                      help="show what would be dropped or downsampled; change nothing")
    sub.choices["db-size"].add_argument("--days", type=_positive_int, default=7, metavar="N",
                                        help="measure growth over the last N days (default 7)")
    _add_demo_arguments(sub.choices["demo"])
    _add_simulator_arguments(sub.choices["simulate"], load=command == "simulate")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _add_once_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument("--progress-interval-s", type=float, default=30.0, metavar="S",
                   help="seconds between progress log events when stderr is not a terminal (default 30)")


def _add_token_arguments(parsers: dict[str, argparse.ArgumentParser]) -> None:
    parsers["check-config"].add_argument(
        "--no-token-check", action="store_true",
        help="do not check the tokens with debug_token (no call to Meta); otherwise, with [app] configured, "
             "exit 1 when a token is invalid, lacks instagram_manage_insights or expires within 7 days")
    parsers["discover"].add_argument("--csv", action="store_true",
                                     help="print the accounts in the accounts-file format (no tokens: the "
                                          "access_token_env column names the token's variable)")
    token = parsers["token"]
    token.add_argument("action", choices=("exchange",), help="exchange: short-lived -> long-lived")
    token.add_argument("--login", choices=("facebook", "instagram"), required=True,
                       help="the login the short-lived token comes from")
    source = token.add_mutually_exclusive_group()
    source.add_argument("--token-env", metavar="NAME",
                        help="read the short-lived token from this environment variable")
    source.add_argument("--token-file", type=Path, metavar="PATH",
                        help="read the short-lived token from this file")


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accounts", type=int, default=20, help="simulated accounts (default 20)")
    p.add_argument("--media", type=int, default=30, help="media per simulated account (default 30)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="simulated Graph latency (default 20)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--state-dir", type=Path, default=Path(".demo"),
                   help="where the demo writes its config and embedded PostgreSQL (default .demo)")


def _add_simulator_arguments(p: argparse.ArgumentParser, *, load: bool) -> None:
    if not load:
        return
    try:
        from collector.simulator import cli as simulator_cli  # noqa: PLC0415
    except ImportError:
        # Let the handler raise the real import error as an internal error instead of argparse
        # complaining about arguments it cannot know.
        p.add_argument("simulator_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    simulator_cli.add_arguments(p)


def console_main() -> NoReturn:
    """The `ig-collector` console script and `python -m collector` (through collector/__main__.py): `main()`,
    then a fast exit."""
    fast_exit(main())


def fast_exit(code: int) -> NoReturn:
    """Exit with `code` once everything a normal exit does that matters has been done (standard streams
    flushed, atexit handlers run: logging's shutdown, the embedded PostgreSQL's stop), skipping only the
    interpreter's teardown, which frees every object one by one: 60-100 ms of a `once` on the project VM
    (docs/benchmarks.md, issue 9). Nothing of ours is left to it: the event loop, the pool and the files
    are closed by the time a command returns, and its only threads are the loop's executor (joined by
    asyncio.Runner) and daemon threads."""
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (`ig-collector status | head`): nothing left to save.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the subcommand, return the exit code (`console_main` is the process entry point)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in _COMMANDS), None)
    args = build_parser(command).parse_args(argv)  # usage errors exit 2 here
    logs.configure(level=args.log_level or "info", json=args.log_json)
    handler: Handler = args.handler
    try:
        return handler(args)
    except exceptions.ConfigError as exc:
        print(f"ig-collector: config error: {logs.redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except exceptions.StorageError as exc:
        log.error("fatal_storage_error", error=str(exc), cause=repr(exc.__cause__) if exc.__cause__ else None)
        return EXIT_FATAL
    except KeyboardInterrupt:  # a SIGINT before the event loop took over signal handling
        return 128 + signal.SIGINT
    except Exception:
        log.exception("internal_error", command=args.command)
        return EXIT_FATAL
