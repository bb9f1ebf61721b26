"""The real CLI as a subprocess (`python -m collector ...`): help, usage errors and exit codes."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from collector import cli, eventloop
from collector.storage import partitions
from tests import fixtures_sim

TOKEN = "tok-CLITEST-0123456789"
REPO = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None,
        timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in (cli.CONFIG_ENV, "DATABASE_URL")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=timeout_s, check=False)


def write_config(folder: Path, extra: str = "") -> Path:
    csv = f"ig_user_id,login,access_token\n17841400000000002,facebook,{TOKEN}\n"
    (folder / "accounts.csv").write_text(csv)
    path = folder / "config.toml"
    path.write_text(f"""accounts_file = "accounts.csv"
[[accounts]]
ig_user_id = "17841400000000001"
login = "instagram"
access_token = "{TOKEN}"
{extra}""")
    return path


@pytest.mark.parametrize("command", list(cli._COMMANDS))
def test_help_of_every_subcommand(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: ig-collector {command}" in result.stdout
    assert "--log-level" in result.stdout


def test_top_level_help_lists_commands_and_exit_codes() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in cli._COMMANDS:
        assert command in result.stdout
    assert "Exit codes" in result.stdout


@pytest.mark.parametrize("args", [(), ("bogus",), ("once",), ("once", "-c", "x.toml", "--bogus"),
                                  ("check-config", "-c", "x.toml", "--log-level", "loud")])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_check_config_ok_prints_summary_without_tokens(tmp_path: Path) -> None:
    result = run("check-config", "-c", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "accounts: 2 (instagram 1, facebook 1;" in result.stdout
    assert "config ok" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_check_config_says_when_a_webhook_is_not_served(tmp_path: Path) -> None:
    hook = '[webhook]\nverify_token = "verify-0123456"\napp_secret = "0123456789abcdef"\n'
    result = run("check-config", "-c", str(write_config(tmp_path, hook)))
    assert result.returncode == 0, result.stderr
    assert "webhook: not served (neither [webhook] listen nor [http] listen is set)" in result.stdout
    served = write_config(tmp_path, '[http]\nlisten = "127.0.0.1:9464"\n' + hook)
    result = run("check-config", "-c", str(served))
    assert "webhook: /webhooks/instagram on the [http] listener" in result.stdout, result.stderr


def test_token_exchange_without_the_app_settings_names_the_config_before_reading_a_token(
        tmp_path: Path) -> None:
    path = write_config(tmp_path)
    for login, needed in (("instagram", "app_secret must be set to exchange an instagram token"),
                          ("facebook", "app_id and app_secret must be set to exchange a facebook token")):
        # The short-lived token's variable is not set: had it been read first, that would be the error.
        result = run("token", "exchange", "--login", login, "-c", str(path), "--token-env", "IG_UNSET_SHORT")
        assert result.returncode == 2
        assert f"{path}: [app] {needed}" in result.stderr
        assert "IG_UNSET_SHORT" not in result.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    result = run("check-config", env={cli.CONFIG_ENV: str(write_config(tmp_path))})
    assert result.returncode == 0, result.stderr


def test_check_config_masks_the_database_password(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[database]\nurl = "postgresql://u:dbpass-0987654@db.example:5432/x"\n')
    result = run("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "database: postgresql://u:***@db.example:5432/x" in result.stdout
    assert "dbpass-0987654" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["check-config", "once", "migrate", "run", "status"])
def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path, command: str) -> None:
    path = write_config(tmp_path, "[graph]\nrequest_timeout_s = \"30\"\n")
    result = run(command, "-c", str(path))
    assert result.returncode == 2
    assert f"{path}: [graph] request_timeout_s: expected a number, got string '30'" in result.stderr
    assert TOKEN not in result.stderr


def test_duplicate_account_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    csv = f"ig_user_id,login,access_token\n17841400000000001,facebook,{TOKEN}\n"
    (tmp_path / "accounts.csv").write_text(csv)
    result = run("once", "-c", str(path))
    assert result.returncode == 2
    assert "ig_user_id 17841400000000001 is configured twice" in result.stderr
    assert "accounts.csv line 2" in result.stderr


def test_once_with_unreachable_database_exits_3(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://u:dbpass-1122334@127.0.0.1:{port}/x"
    path = write_config(tmp_path, f'[database]\nurl = "{url}"\nconnect_timeout_s = 2\n')
    result = run("once", "-c", str(path), "--log-json")
    assert result.returncode == 3, result.stderr
    assert "fatal_storage_error" in result.stderr
    assert "dbpass-1122334" not in result.stderr and TOKEN not in result.stderr


# -- against a real PostgreSQL and the simulator over HTTP -----------------------------------------------


async def arun(*args: str, signal_after: str | None = None, signal_when: Callable[[], bool] | None = None,
               send: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
    """The CLI as a subprocess without blocking the event loop (the simulator runs in it). With
    `signal_after`, `send` goes to the process once that log event appeared on stderr and `signal_when`
    (if given) holds."""
    env = {k: v for k, v in os.environ.items() if k not in (cli.CONFIG_ENV, "DATABASE_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    early = b""
    if signal_after is not None:
        while f'"event":"{signal_after}"'.encode() not in early:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=30)
            assert line, early.decode()
            early += line
        while signal_when is not None and not signal_when():
            assert proc.returncode is None, early.decode()
            await asyncio.sleep(0.01)
        proc.send_signal(send)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), (early + stderr).decode()


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


FAST = {"collect": {"account_backfill_days": 3}, "rate_limit": {"account_calls_per_s": 100.0}}


async def test_migrate_applies_then_has_nothing_to_do(tmp_path: Path, empty_db_dsn: str,
                                                      simulator: fixtures_sim.RunningSimulator) -> None:
    path = fixtures_sim.write_config(tmp_path, simulator, empty_db_dsn)
    code, out, err = await arun("migrate", "-c", str(path))
    assert code == 0, err
    assert "applied 0 migration(s)" not in out and "001" in out
    code, out, err = await arun("migrate", "-c", str(path))
    assert (code, out.strip()) == (0, "applied 0 migration(s)"), err


async def test_once_exits_0_when_every_account_is_collected(
        tmp_path: Path, db_dsn: str, start_simulator: fixtures_sim.StartSimulator) -> None:
    sim = await start_simulator(accounts=4, media_per_account=5, world_knobs={"invalid_token_fraction": 0.0})
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, accounts_csv=True, sections=FAST)
    code, out, err = await arun("once", "-c", str(path), "--log-json")
    assert code == 0, err
    summary = orjson.loads(out)
    assert summary["accounts_ok"] == 4 and summary["interrupted"] is False
    assert await count(db_dsn, "ig_account") == 4
    assert all(a.access_token not in out + err for a in sim.accounts())


async def test_once_exits_1_when_some_accounts_fail(
        tmp_path: Path, db_dsn: str, start_simulator: fixtures_sim.StartSimulator) -> None:
    sim = await start_simulator(accounts=4, media_per_account=5, world_knobs={"invalid_token_fraction": 0.5})
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, sections=FAST)
    code, out, err = await arun("once", "-c", str(path), "--log-json")
    assert code == 1, err
    summary = orjson.loads(out)
    assert summary["accounts_failed"] >= 1 and summary["accounts_ok"] >= 1
    assert all(a.access_token not in out + err for a in sim.accounts())


@pytest.mark.parametrize(("send", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_signal_during_once_flushes_and_exits_128_plus_signal(
        tmp_path: Path, db_dsn: str, start_simulator: fixtures_sim.StartSimulator,
        send: signal.Signals, expected: int) -> None:
    # Slow enough that the pass is still running when the signal comes.
    sim = await start_simulator(accounts=6, media_per_account=20, latency_ms=300,
                                world_knobs={"invalid_token_fraction": 0.0})
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, sections=FAST)
    # Once every account's profile call is on the wire: those are answered and stored (only calls still
    # waiting are abandoned by the stop).
    code, out, err = await arun("once", "-c", str(path), "--log-json", signal_after="pass_progress",
                                signal_when=lambda: sim.stats.by_kind["profile"] >= 6, send=send)
    assert code == expected, err
    assert "stop_requested" in err
    summary = orjson.loads(out)
    assert summary["accounts_ok"] < 6  # stopped early
    # What was fetched before the signal was written: every account's profile came first.
    assert await count(db_dsn, "ig_account") == 6


async def test_prune_dry_run_and_db_size(tmp_path: Path, db_dsn: str) -> None:
    """`prune --dry-run` changes nothing and says what it would drop; `prune` drops it; `db-size` prints
    every table with its projections."""
    old = partitions.Month.of(datetime.now(UTC)).next(-4)
    conn = await asyncpg.connect(db_dsn)
    try:
        await partitions.create_partition(conn, partitions.HISTORY, old)
        await conn.execute("INSERT INTO ig_media_insight_history (media_id, metric, value, collected_at) "
                           "VALUES (1, 'reach', 1, $1)", old.start)
    finally:
        await conn.close()
    path = write_config(tmp_path, f'[database]\nurl = "{db_dsn}"\n[retention]\nhistory_days = 60\n')
    name = partitions.partition_name(partitions.HISTORY, old)

    dry = await arun("prune", "-c", str(path), "--dry-run")
    assert dry[0] == 0, dry
    assert f"would drop               {name}" in dry[1] and "rows 1 -> 0" in dry[1] and "dry run" in dry[1]
    assert await count(db_dsn, "ig_media_insight_history") == 1
    done = await arun("prune", "-c", str(path))
    assert done[0] == 0, done
    assert "did drop" in done[1] and name in done[1]
    assert await count(db_dsn, "ig_media_insight_history") == 0

    size = await arun("db-size", "-c", str(path), "--days", "3")
    assert size[0] == 0, size
    for table in ("ig_media_insight_history", "ig_media", "ig_account_insight", "collector_job_state"):
        assert table in size[1]
    assert "size +365d" in size[1] and "last 3 days" in size[1]


@pytest.mark.parametrize("command", ["status", "db-size", "prune"])
async def test_commands_that_read_the_schema_say_to_migrate_a_database_never_migrated(
        tmp_path: Path, empty_db_dsn: str, command: str) -> None:
    path = write_config(tmp_path, f'[database]\nurl = "{empty_db_dsn}"\n')
    code, out, err = await arun(command, "-c", str(path), "--log-json")
    assert code == 3, err
    errors = [orjson.loads(line) for line in err.splitlines() if '"fatal_storage_error"' in line]
    assert [e["error"] for e in errors] == [
        "the database was never migrated: run `ig-collector migrate` first"]
    assert "does not exist" not in err and out == ""
    conn = await asyncpg.connect(empty_db_dsn)
    try:  # and it was left as it was
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0
    finally:
        await conn.close()


def test_command_loops_collect_garbage_less_often_and_freeze_start_up() -> None:
    # The runner every command's loop comes from tunes the cyclic GC (docs/benchmarks.md, issue 9): the
    # first-generation threshold is raised and what start-up made is moved to the permanent generation.
    code = ("import gc; from collector import eventloop\n"
            "with eventloop.runner(False) as r: r.run(__import__('asyncio').sleep(0))\n"
            "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=60)
    assert done.stdout.split() == [str(eventloop.GC_FIRST_GENERATION_THRESHOLD), "True"]


def test_start_up_imports_collect_no_garbage_and_are_frozen() -> None:
    # `ig-collector` and `python -m collector` import the command line inside eventloop.start_up: no cyclic
    # collection during the imports (they made ~50 at CPython's default threshold, for nothing), then the
    # runner's tuning (threshold raised, start-up frozen) and the collector enabled again.
    code = ("import gc, sys\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'collector.cli':\n"
            "            print('enabled while importing', gc.isenabled(), flush=True)\n"
            "sys.meta_path.insert(0, Spy())\n"
            "sys.argv = ['ig-collector', '--version']\n"
            "from collector.__main__ import main\n"
            "before = gc.get_stats()[0]['collections']\n"
            "try:\n"
            "    main()\n"
            "finally:\n"
            "    print('after', gc.isenabled(), gc.get_threshold()[0], gc.get_freeze_count() > 1000,\n"
            "          gc.get_stats()[0]['collections'] - before)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=60)
    threshold = eventloop.GC_FIRST_GENERATION_THRESHOLD
    assert done.stdout.splitlines() == ["enabled while importing False", "ig-collector 0.1.0",
                                        f"after True {threshold} True 0"]


def test_start_up_restores_a_disabled_collector_and_survives_errors() -> None:
    gc.disable()
    try:
        with pytest.raises(ZeroDivisionError), eventloop.start_up():
            assert not gc.isenabled()
            1 / 0  # noqa: B018
        assert not gc.isenabled()  # it was disabled before: left so
    finally:
        gc.enable()
    with eventloop.start_up():
        assert not gc.isenabled()
    assert gc.isenabled()
