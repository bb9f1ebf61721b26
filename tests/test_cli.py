"""The real CLI as a subprocess (`python -m collector ...`): help, usage errors and exit codes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from collector import cli

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
