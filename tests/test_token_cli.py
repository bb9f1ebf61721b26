"""`check-config` token checks, `discover` and `token exchange` as real subprocesses against the simulator
over HTTP: tokens are named by their position in the config, and never appear in any output."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest

from collector import cli
from tests import fixtures_sim

REPO = Path(__file__).resolve().parent.parent
UNUSED_DSN = "postgresql://nobody@127.0.0.1:1/unused"  # these commands never open the database


async def arun(*args: str, env: dict[str, str] | None = None,
               stdin: str | None = None) -> tuple[int, str, str]:
    full_env = {k: v for k, v in os.environ.items() if k not in (cli.CONFIG_ENV, "DATABASE_URL")}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", *args, cwd=REPO, env=full_env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else b""), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def write_config(tmp_path: Path, sim: fixtures_sim.RunningSimulator, tokens: list[tuple[str, str, str]], *,
                 app: bool = True) -> Path:
    sections: dict[str, dict[str, object]] = {
        "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05},
        "rate_limit": {"account_calls_per_s": 0, "app_calls_per_s": 0},
        "collect": {"account_backfill_days": 2, "media_max_age_days": 90}}
    if app:
        sections["app"] = {"app_id": sim.simulator.accounts.app_id,
                           "app_secret": sim.simulator.accounts.app_secret}
    path = fixtures_sim.write_config(tmp_path, sim, UNUSED_DSN, accounts=[], sections=sections)
    lines = []
    for login, key, value in tokens:
        lines += ["", "[[tokens]]", f'login = "{login}"', f'{key} = "{value}"']
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


@pytest.fixture
async def sim(start_simulator: fixtures_sim.StartSimulator) -> fixtures_sim.RunningSimulator:
    return await start_simulator(accounts=12, media_per_account=1, seed=4,
                                 world_knobs={"invalid_token_fraction": 0.0})


def facebook_ids(sim: fixtures_sim.RunningSimulator) -> list[str]:
    return [a.ig_user_id for a in sim.world.accounts() if a.login == "facebook"]


async def test_check_config_reports_a_missing_scope_and_an_expiring_token_by_position(
        tmp_path: Path, sim: fixtures_sim.RunningSimulator) -> None:
    directory = sim.simulator.accounts
    ids = facebook_ids(sim)
    good = directory.user_token(directory.add_user(ids[:2]))
    no_insights = directory.user_token(directory.add_user(
        ids[2:3], scopes=("instagram_basic", "pages_read_engagement", "pages_show_list")))
    expiring = directory.user_token(directory.add_user(ids[3:4]), expires_in_s=3 * 86400)
    ig = next(a for a in sim.world.accounts() if a.login == "instagram").access_token
    path = write_config(tmp_path, sim, [("facebook", "access_token", good),
                                        ("facebook", "access_token_env", "FB_NO_INSIGHTS"),
                                        ("facebook", "access_token", expiring),
                                        ("instagram", "access_token", ig)])
    code, out, err = await arun("check-config", "-c", str(path), env={"FB_NO_INSIGHTS": no_insights})
    assert code == cli.EXIT_ACCOUNTS_FAILED, err
    assert "config ok" in out
    assert ("[[tokens]] #2 (facebook, access_token_env=FB_NO_INSIGHTS): missing permission "
            "instagram_manage_insights") in out
    assert "[[tokens]] #3 (facebook, access_token): token expires in 3.0 days" in out
    assert "[[tokens]] #4 (instagram, access_token): not checked: Instagram Login token" in out
    assert "[[tokens]] #1" not in out.split("token problems:")[1]
    for token in (good, no_insights, expiring, ig, sim.simulator.accounts.app_secret):
        assert token not in out + err
    problems = [orjson.loads(line) for line in err.splitlines() if '"token_problem"' in line]
    assert {(p["token"].split(" ")[1], p["problem"]) for p in problems} == {
        ("#2", "missing_scope"), ("#3", "expiring")}

    code, out, _ = await arun("check-config", "-c", str(path), "--no-token-check",
                              env={"FB_NO_INSIGHTS": no_insights})
    assert code == 0 and "token problems" not in out


async def test_check_config_without_app_makes_no_call(tmp_path: Path,
                                                      sim: fixtures_sim.RunningSimulator) -> None:
    directory = sim.simulator.accounts
    token = directory.user_token(directory.add_user(facebook_ids(sim)[:1]))
    path = write_config(tmp_path, sim, [("facebook", "access_token", token)], app=False)
    calls = sim.stats.calls
    code, out, _ = await arun("check-config", "-c", str(path))
    assert code == 0 and "tokens: [[tokens]] #1 (facebook, access_token)" in out
    assert sim.stats.calls == calls


async def test_discover_prints_the_accounts_and_why_tokens_found_nothing(
        tmp_path: Path, sim: fixtures_sim.RunningSimulator) -> None:
    directory = sim.simulator.accounts
    ids = facebook_ids(sim)
    many = directory.user_token(directory.add_user(ids[:3], pages_without_account=2))
    pages_only = directory.user_token(directory.add_user([], pages_without_account=2))
    broken_user = directory.add_user(ids[3:4], token_error=460)
    broken = directory.user_token(broken_user)
    path = write_config(tmp_path, sim, [("facebook", "access_token_env", "FB_MANY"),
                                        ("facebook", "access_token", pages_only),
                                        ("facebook", "access_token_file", "broken.token")])
    (tmp_path / "broken.token").write_text(broken)
    env = {"FB_MANY": many}
    code, out, err = await arun("discover", "-c", str(path), env=env)
    assert code == cli.EXIT_ACCOUNTS_FAILED, err
    assert "accounts to collect from [[tokens]]: 3" in out
    for ig_user_id in ids[:3]:
        line = next(x for x in out.splitlines() if ig_user_id in x)
        assert "[[tokens]] #1 (facebook, access_token_env=FB_MANY) via Page" in line
        assert sim.world.account(ig_user_id).username in line
    assert ("[[tokens]] #2 (facebook, access_token): found nothing: 2 Page(s) reached, none with a linked "
            "Instagram professional account") in out
    assert "[[tokens]] #3 (facebook, access_token_file=broken.token): found nothing: discovery failed:" in out
    assert "code=190" in out

    code, out, err = await arun("discover", "-c", str(path), "--csv", env=env)
    rows = [line for line in out.splitlines() if not line.startswith("#")]
    assert rows == ["ig_user_id,login,access_token_env", *(f"{i},facebook,FB_MANY" for i in ids[:3])]
    assert "found nothing" in err
    for token in (many, pages_only, broken):
        assert token not in out + err
    # The CSV is an accounts file as it is.
    (tmp_path / "found.csv").write_text(out)
    check = tmp_path / "check.toml"
    check.write_text(f'accounts_file = "found.csv"\n[database]\nurl = "{UNUSED_DSN}"\n')
    code, out, err = await arun("check-config", "-c", str(check), env=env)
    assert code == 0 and "accounts: 3 (instagram 0, facebook 3" in out, err


async def test_once_with_tokens_names_a_failing_token_by_position_only(
        tmp_path: Path, sim: fixtures_sim.RunningSimulator, db_dsn: str) -> None:
    directory = sim.simulator.accounts
    ig = next(a for a in sim.world.accounts() if a.login == "instagram")
    revoked = directory.user_token(directory.add_user(facebook_ids(sim)[:2], token_error=460))
    path = write_config(tmp_path, sim, [("instagram", "access_token_env", "IG_TOKEN"),
                                        ("facebook", "access_token", revoked)])
    path.write_text(path.read_text().replace(UNUSED_DSN, db_dsn))
    code, out, err = await arun("once", "-c", str(path), "--no-progress", "--log-json",
                                env={"IG_TOKEN": ig.access_token})
    assert code == 0, err
    assert orjson.loads(out)["accounts_total"] == 1
    [failed] = [orjson.loads(x) for x in err.splitlines() if '"discovery_token_failed"' in x]
    assert failed["token"] == "[[tokens]] #2 (facebook, access_token)" and "code=190" in failed["error"]
    for token in (ig.access_token, revoked, directory.app_secret):
        assert token not in out + err


async def test_token_exchange_reads_stdin_or_env_and_prints_the_long_lived_token_once(
        tmp_path: Path, sim: fixtures_sim.RunningSimulator) -> None:
    directory = sim.simulator.accounts
    user = directory.add_user(facebook_ids(sim)[:2])
    short = directory.user_token(user, short_lived=True)
    path = write_config(tmp_path, sim, [])  # no accounts yet: exchanging a token needs only [app]
    code, out, err = await arun("token", "exchange", "--login", "facebook", "-c", str(path),
                                stdin=short + "\n")
    assert code == 0, err
    [long_lived] = out.splitlines()
    assert long_lived.startswith("EAA") and long_lived != short
    assert long_lived not in err and short not in out + err
    assert "valid for 60 days" in err
    # The new token is one Meta knows: it reaches the user's accounts.
    ig = next(a for a in sim.world.accounts() if a.login == "instagram")
    short_ig = directory.instagram_token(ig.ig_user_id)
    code, out, err = await arun("token", "exchange", "--login", "instagram", "-c", str(path),
                                "--token-env", "SHORT", env={"SHORT": short_ig})
    assert code == 0, err
    [long_ig] = out.splitlines()
    assert long_ig.startswith("IGAA") and short_ig not in out + err

    bad = path.read_text().replace(directory.app_secret, "0" * 32)
    path.write_text(bad)
    code, out, err = await arun("token", "exchange", "--login", "facebook", "-c", str(path), stdin=short)
    assert code == cli.EXIT_ACCOUNTS_FAILED
    assert out == "" and "token exchange failed: Error validating client secret." in err
    assert short not in err and "0" * 32 not in err
