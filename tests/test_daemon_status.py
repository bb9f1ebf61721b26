"""The `status` table from explicit state (the subprocess run in test_daemon.py covers the database read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector import models, scheduler, settings, status, tokens

NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)


def account(n: int, login: models.Login = "instagram") -> models.Account:
    return models.Account(str(17841400000000000 + n), login, models.Secret(f"IGQ-{n}"), f"test #{n}")


def test_render(tmp_path: Path) -> None:
    a, b, c = account(1), account(2, "facebook"), account(3)
    cfg = settings.Config(source=tmp_path / "config.toml", accounts=(a, b, c))
    states = {
        (a.ig_user_id, job): scheduler.JobState(NOW - timedelta(minutes=5), NOW - timedelta(minutes=5), 0)
        for job in models.Job
    }
    states[(b.ig_user_id, models.Job.MEDIA)] = scheduler.JobState(
        NOW - timedelta(hours=3), NOW - timedelta(minutes=1), 4)
    db_accounts: dict[str, dict[str, object]] = {
        a.ig_user_id: {"username": "alice", "status": "ok", "status_detail": None},
        b.ig_user_id: {"username": "bob", "status": "token_invalid",
                       "status_detail": "Error validating access token code=190"},
    }
    store = tokens.TokenStore(tmp_path)
    store.refreshed(a, NOW - timedelta(days=2), {"access_token": "IGQ-new", "expires_in": 60 * 86400})
    lines = status.render(cfg, states, db_accounts, store, NOW)
    header, row_a, row_b, row_c = lines[:4]
    assert header.split()[:3] == ["IG_USER_ID", "USERNAME", "STATUS"]
    assert row_a.split()[:8] == [a.ig_user_id, "alice", "ok", "5m", "5m", "5m", "5m", "5m"]
    assert "58d left" in row_a
    assert "token_invalid" in row_b and "3h !4" in row_b and row_b.endswith("-")
    assert "never" in row_c and "now" in row_c and "unknown" in row_c  # a new account is due at once
    assert f"{b.ig_user_id}: Error validating access token code=190" in lines
    assert all("IGQ-" not in line for line in lines)


def test_render_cluster() -> None:
    instances = [
        {"instance_id": "host-a", "started_at": NOW - timedelta(hours=2),
         "heartbeat_at": NOW - timedelta(seconds=5), "stopped_at": None, "lease_s": 60.0, "claims": 40,
         "takeovers": 3, "renewals": 500, "releases": 38, "lost": 0},
        {"instance_id": "host-b", "started_at": NOW - timedelta(hours=3),
         "heartbeat_at": NOW - timedelta(hours=1), "stopped_at": NOW - timedelta(hours=1), "lease_s": 60.0,
         "claims": 9, "takeovers": 0, "renewals": 20, "releases": 9, "lost": 1},
    ]
    held = [{"ig_user_id": "17841400000000001", "holder": "host-a", "expired": False},
            {"ig_user_id": "17841400000000002", "holder": "host-c", "expired": True}]
    lines = status.render_cluster(held, instances, NOW)
    rows = {cells[0]: cells for cells in map(str.split, lines) if cells and cells[0].startswith("host-")
            and "holds:" not in cells}
    assert rows["host-a"][:2] == ["host-a", "running"]
    assert rows["host-a"][-6:] == ["1", "40", "3", "500", "38", "0"]
    assert rows["host-b"][1] == "stopped"
    assert "host-a holds: 17841400000000001" in lines
    assert any(line.startswith("Expired leases, to be taken over: 1") for line in lines)
    assert status.render_cluster([], [], NOW) == []
