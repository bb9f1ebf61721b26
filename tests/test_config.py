"""Config loading: every validation case names its source; valid configs fill the settings."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import config, exceptions, models, redaction, settings

TOKEN = "tok-test-secret-0001"
ACCOUNT = f"""
[[accounts]]
ig_user_id = "17841400000000001"
login = "instagram"
access_token = "{TOKEN}"
"""


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    redaction.forget_secrets()


def write(folder: Path, toml: str, csv: str | None = None, csv_name: str = "accounts.csv") -> Path:
    if csv is not None:
        (folder / csv_name).write_text(csv)
    path = folder / "config.toml"
    path.write_text(toml)
    return path


def error_of(path: Path) -> exceptions.ConfigError:
    with pytest.raises(exceptions.ConfigError) as info:
        config.load(path)
    return info.value


# -- valid configs ---------------------------------------------------------------------------------------


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, ACCOUNT))
    assert cfg.accounts == (models.Account("17841400000000001", "instagram", models.Secret(TOKEN),
                                           f"{tmp_path / 'config.toml'} [[accounts]] #1"),)
    assert cfg.graph == settings.GraphSettings()
    assert cfg.schedule == settings.ScheduleSettings()
    assert cfg.webhook is None
    assert cfg.retention == settings.RetentionSettings(history_days=None, history_full_days=None)  # keep all
    # Relative paths resolve against the config's folder, and the embedded database lives in the state dir.
    assert cfg.state_dir == tmp_path / ".state"
    assert cfg.database.embedded_dir == tmp_path / ".state" / "postgres"


def test_example_config_is_valid_and_matches_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IG_TOKEN_1", "example-token-1")
    cfg = config.load(Path(__file__).parent.parent / "config" / "example.toml")
    assert len(cfg.accounts) == 3
    for section in ("graph", "rate_limit", "retry", "collect", "schedule", "http", "log", "app", "retention"):
        assert getattr(cfg, section) == getattr(settings.Config(source=Path(), accounts=()), section), section


def test_every_section_and_structured_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_VERIFY", "verify-token-xyz")
    (tmp_path / "app_secret").write_text("  app-secret-123456\n")
    cfg = config.load(write(tmp_path, 'state_dir = "/var/lib/ig"\n' + ACCOUNT + """
[database]
url = "postgresql://u:pw-secret-9@db:5432/x"
pool_max_size = 8
[graph]
request_timeout_s = 12
instagram_base_url = "http://127.0.0.1:8080/"
[collect]
metrics.media.FEED = ["reach", "likes"]
[collect.metrics.account]
demographics = ["follower_demographics"]
[schedule]
media_tiers = [{max_age_h = 24, every_h = 0.5}, {every_h = 48}]
[http]
listen = "127.0.0.1:9464"
[webhook]
verify_token_env = "HOOK_VERIFY"
app_secret_file = "app_secret"
[log]
level = "DEBUG"
json = true
[app]
app_id = "1234"
app_secret = "another-secret-77"
[retention]
history_days = 730
history_full_days = 90
"""))
    assert cfg.retention == settings.RetentionSettings(history_days=730, history_full_days=90)
    assert cfg.state_dir == Path("/var/lib/ig")
    assert cfg.database.embedded_dir == Path("/var/lib/ig/postgres")
    assert cfg.database.pool_max_size == 8
    assert cfg.graph.request_timeout_s == 12.0 and isinstance(cfg.graph.request_timeout_s, float)
    assert cfg.graph.instagram_base_url == "http://127.0.0.1:8080"
    assert cfg.collect.metrics == {"media.FEED": ("reach", "likes"),
                                   "account.demographics": ("follower_demographics",)}
    assert cfg.schedule.media_tiers == ((86400.0, 1800.0), (math.inf, 172800.0))
    assert cfg.webhook is not None
    assert cfg.webhook.verify_token.reveal() == "verify-token-xyz"
    assert cfg.webhook.app_secret.reveal() == "app-secret-123456"
    assert cfg.log == settings.LogSettings(level="debug", json=True)
    assert cfg.app.app_secret == models.Secret("another-secret-77")
    # Every secret is registered for redaction, the database password included.
    text = f"{TOKEN} verify-token-xyz app-secret-123456 another-secret-77 pw-secret-9"
    assert redaction.redact(text) == "*** *** *** *** ***"
    assert "pw-secret-9" not in "\n".join(config.summary(cfg))


def test_token_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOK_A", "token-from-env-1")
    (tmp_path / "tok").write_text("\n token-from-file-2 \n")
    cfg = config.load(write(tmp_path, """
[[accounts]]
ig_user_id = "1"
login = "facebook"
access_token_env = "TOK_A"
[[accounts]]
ig_user_id = 2
login = "instagram"
access_token_file = "tok"
"""))
    assert [a.access_token.reveal() for a in cfg.accounts] == ["token-from-env-1", "token-from-file-2"]
    assert [a.ig_user_id for a in cfg.accounts] == ["1", "2"]


def test_csv_any_column_order_comments_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T5", "token-five-555")
    cfg = config.load(write(tmp_path, 'accounts_file = "accounts.csv"\n', csv=(
        "# comment\n\nlogin,access_token_env,ig_user_id\ninstagram,T5,5\n\n# another\nfacebook , T5 , 6\n")))
    assert [(a.ig_user_id, a.login, a.access_token.reveal()) for a in cfg.accounts] == [
        ("5", "instagram", "token-five-555"), ("6", "facebook", "token-five-555")]
    assert cfg.accounts[0].source == f"{tmp_path / 'accounts.csv'} line 4"
    assert cfg.accounts[1].source == f"{tmp_path / 'accounts.csv'} line 7"


def test_ten_thousand_csv_rows_load(tmp_path: Path) -> None:
    # How fast is a benchmark's business (no wall time in tests); this checks that all of them load.
    rows = "".join(f"{17841400000000000 + i},{'instagram' if i % 2 else 'facebook'},tok-{i:08d}-x\n"
                   for i in range(10_000))
    path = write(tmp_path, 'accounts_file = "accounts.csv"\n', csv="ig_user_id,login,access_token\n" + rows)
    cfg = config.load(path)
    assert len(cfg.accounts) == 10_000
    assert redaction.redact("tok-00004242-x") == "***"


# -- errors: each names its source -----------------------------------------------------------------------


@pytest.mark.parametrize(("toml", "source", "fragment"), [
    ("[graph]\nrequest_timeout_s = '30'\n" + ACCOUNT, "[graph] request_timeout_s",
     "expected a number, got string '30'"),
    ("[graph]\nrequest_timeout_s = 0\n" + ACCOUNT, "[graph] request_timeout_s", "greater than 0"),
    ("[retry]\nmax_attempts = 2.5\n" + ACCOUNT, "[retry] max_attempts", "whole number"),
    ("[collect]\nmedia_breakdowns = 1\n" + ACCOUNT, "[collect] media_breakdowns", "true or false"),
    ("[graph]\nrequest_timout_s = 3\n" + ACCOUNT, "[graph] request_timout_s", "unknown key"),
    ("acounts_file = 'x.csv'\n" + ACCOUNT, "", "unknown key(s) acounts_file"),
    ("graph = 3\n" + ACCOUNT, "graph", "expected a table [graph]"),
    ("[graph]\napi_version = '24'\n" + ACCOUNT, "[graph] api_version", "v24.0"),
    ("[graph]\nfacebook_base_url = 'graph.facebook.com'\n" + ACCOUNT, "[graph] facebook_base_url",
     "http(s) URL"),
    ("[http]\nlisten = '9464'\n" + ACCOUNT, "[http] listen", "host:port"),
    ("[log]\nlevel = 'loud'\n" + ACCOUNT, "[log] level", "unknown level"),
    ("[retention]\nhistory_days = 0\n" + ACCOUNT, "[retention] history_days", "greater than 0"),
    ("[retention]\nhistory_days = 1.5\n" + ACCOUNT, "[retention] history_days", "whole number"),
    ("[retention]\nhistory_days = 30\nhistory_full_days = 30\n" + ACCOUNT, "[retention] history_full_days",
     "less than history_days"),
    ("[retention]\nkeep_days = 3\n" + ACCOUNT, "[retention] keep_days", "unknown key"),
    ("[rate_limit]\nslow_down_at_pct = 120\n" + ACCOUNT, "[rate_limit] slow_down_at_pct",
     "at most 100"),
    ("[database]\nurl = 'mysql://u:pw@x/y'\n" + ACCOUNT, "[database] url", "postgresql://"),
    ("[collect.metrics]\n'media.FEED' = ['impressions']\n" + ACCOUNT, "[collect] metrics",
     "deprecated"),
    ("[collect.metrics]\n'media.FEEED' = ['reach']\n" + ACCOUNT, "[collect] metrics", "unknown key"),
    ("[schedule]\nmedia_tiers = [{max_age_h = 48, every_h = 1}, {max_age_h = 24, every_h = 2}]\n" + ACCOUNT,
     "[schedule] media_tiers #2", "must grow"),
    ("[schedule]\nmedia_tiers = [{every_h = 1}, {every_h = 2}]\n" + ACCOUNT,
     "[schedule] media_tiers #1", "need max_age_h"),
    ("[schedule]\nmedia_tiers = [{max_age = 4, every_h = 1}]\n" + ACCOUNT,
     "[schedule] media_tiers #1", "unknown key max_age"),
    ("[webhook]\nverify_token = 'abcdefgh'\n" + ACCOUNT, "[webhook] app_secret", "missing"),
    ("[app]\napp_secret = 'abcdefgh'\napp_secret_env = 'X'\n" + ACCOUNT, "[app] app_secret",
     "only one of"),
    ("", "", "no accounts configured"),
    ("[[accounts]]\nlogin = 'instagram'\naccess_token = 'abcdefgh'\n", "[[accounts]] #1 ig_user_id",
     "missing required key"),
    ("[[accounts]]\nig_user_id = '1'\nlogin = 'tiktok'\naccess_token = 'abcdefgh'\n",
     "[[accounts]] #1 login", "unknown login 'tiktok'"),
    ("[[accounts]]\nig_user_id = '17841x'\nlogin = 'instagram'\naccess_token = 'abcdefgh'\n",
     "[[accounts]] #1 ig_user_id", "all digits"),
    ("[[accounts]]\nig_user_id = '0123'\nlogin = 'instagram'\naccess_token = 'abcdefgh'\n",
     "[[accounts]] #1 ig_user_id", "leading zero"),
    ("[[accounts]]\nig_user_id = '1'\nlogin = 'instagram'\n", "[[accounts]] #1 access_token",
     "exactly one of"),
    ("[[accounts]]\nig_user_id = '1'\nlogin = 'instagram'\naccess_token = 'abcdefgh'\n"
     "access_token_env = 'X'\n",
     "[[accounts]] #1 access_token", "found access_token, access_token_env"),
    ("[[accounts]]\nig_user_id = '1'\nlogin = 'instagram'\naccess_token_env = 'NO_SUCH_VAR_42'\n",
     "[[accounts]] #1 access_token_env", "NO_SUCH_VAR_42 is not set"),
    ("[[accounts]]\nig_user_id = '1'\nlogin = 'instagram'\naccess_token_file = 'missing.tok'\n",
     "[[accounts]] #1 access_token_file", "cannot read"),
    ("[[accounts]]\nig_user_id = '1'\nlogin = 'instagram'\naccess_token = 'abcdefgh'\ntoken = 'x'\n",
     "[[accounts]] #1 token", "unknown key"),
    ("accounts = 'x'\n", "accounts", "array of tables"),
    ("tokens = 'x'\n", "tokens", "array of tables [[tokens]]"),
    ("[[tokens]]\naccess_token = 'abcdefgh'\n", "[[tokens]] #1 login", "missing required key"),
    ("[[tokens]]\nlogin = 'myspace'\naccess_token = 'abcdefgh'\n", "[[tokens]] #1 login", "unknown login"),
    ("[[tokens]]\nlogin = 'facebook'\n", "[[tokens]] #1 access_token", "exactly one of"),
    ("[[tokens]]\nlogin = 'facebook'\naccess_token = 'abcdefgh'\naccess_token_file = 'x'\n",
     "[[tokens]] #1 access_token", "found access_token, access_token_file"),
    ("[[tokens]]\nlogin = 'facebook'\naccess_token_env = 'NO_SUCH_VAR_43'\n",
     "[[tokens]] #1 access_token_env", "NO_SUCH_VAR_43 is not set"),
    ("[[tokens]]\nlogin = 'facebook'\naccess_token = 'abcdefgh'\nig_user_id = '1'\n",
     "[[tokens]] #1 ig_user_id", "unknown key"),
    ("[collect]\ndiscovery_interval_s = 0\n" + ACCOUNT, "[collect] discovery_interval_s", "greater than 0"),
    ("[graph\n", "", "invalid TOML"),
])
def test_errors_name_the_source(tmp_path: Path, toml: str, source: str, fragment: str) -> None:
    err = error_of(write(tmp_path, toml))
    assert err.source == f"{tmp_path}/config.toml" + (f": {source}" if source else "")
    assert fragment in str(err)
    assert "abcdefgh" not in str(err)


def test_tokens_alone_are_a_valid_config_and_are_named_by_position(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FB_TOKEN", "fb-token-secret-1")
    (tmp_path / "ig.token").write_text("ig-token-secret-2\n")
    toml = ("[[tokens]]\nlogin = 'facebook'\naccess_token_env = 'FB_TOKEN'\n"
            "[[tokens]]\nlogin = 'instagram'\naccess_token_file = 'ig.token'\n"
            "[[tokens]]\nlogin = 'instagram'\naccess_token = 'ig-token-secret-3'\n")
    cfg = config.load(write(tmp_path, toml))
    assert cfg.accounts == ()
    assert [t.label for t in cfg.tokens] == [
        "[[tokens]] #1 (facebook, access_token_env=FB_TOKEN)",
        "[[tokens]] #2 (instagram, access_token_file=ig.token)",
        "[[tokens]] #3 (instagram, access_token)"]
    secrets = ("fb-token-secret-1", "ig-token-secret-2", "ig-token-secret-3")
    assert [t.access_token for t in cfg.tokens] == [models.Secret(s) for s in secrets]
    assert cfg.collect.discovery_interval_s == 6 * 3600.0
    summary = "\n".join(config.summary(cfg))
    assert "[[tokens]] #2 (instagram, access_token_file=ig.token)" in summary
    for secret in secrets:
        assert secret not in summary
        assert secret not in redaction.redact(f"x {secret} y")


def test_missing_config_file(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.toml")
    assert err.source == str(tmp_path / "nope.toml")
    assert "not found" in str(err)


def test_duplicate_across_inline_and_csv_names_both(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, 'accounts_file = "accounts.csv"\n' + ACCOUNT,
                         csv="ig_user_id,login,access_token\n17841400000000001,facebook,other-token\n"))
    assert "17841400000000001 is configured twice" in str(err)
    assert "[[accounts]] #1" in str(err) and "accounts.csv line 2" in str(err)
    assert TOKEN not in str(err) and "other-token" not in str(err)


def test_duplicate_within_csv(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, 'accounts_file = "accounts.csv"\n',
                         csv="ig_user_id,login,access_token\n7,facebook,tok-aaaaaaa\n7,instagram,tok-bbbbbbb\n"))
    assert "accounts.csv line 2 and at" in str(err) and "accounts.csv line 3" in str(err)


@pytest.mark.parametrize(("csv", "where", "fragment"), [
    ("ig_user_id,login\n1,instagram\n", "line 1", "needs exactly one of the columns"),
    ("ig_user_id,access_token\n1,abcdefgh\n", "line 1", "missing column(s) login"),
    ("ig_user_id,login,access_token,note\n", "line 1", "unknown column(s) note"),
    ("", None, "empty"),
    ("ig_user_id,login,access_token\n1,instagram,abcdefgh\n2,instagram\n", "line 3", "expected 3 columns"),
    ("ig_user_id,login,access_token\n1,instagram,abcdefgh\n2,instagram,abcdefgh,x\n", "line 3",
     "found 4"),
    ("ig_user_id,login,access_token\n\n12a,instagram,abcdefgh\n", "line 3", "all digits"),
    ("ig_user_id,login,access_token\n12,myspace,abcdefgh\n", "line 2", "unknown login"),
    ("ig_user_id,login,access_token\n12,instagram,\n", "line 2", "empty access_token"),
    ("ig_user_id,login,access_token_env\n12,instagram,NO_SUCH_VAR_43\n", "line 2", "VAR_43 is not set"),
])
def test_csv_errors_name_the_line(tmp_path: Path, csv: str, where: str | None, fragment: str) -> None:
    err = error_of(write(tmp_path, 'accounts_file = "accounts.csv"\n', csv=csv))
    expected = str(tmp_path / "accounts.csv") + (f": {where}" if where else "")
    assert err.source == expected
    assert fragment in str(err)
    assert "abcdefgh" not in str(err)


def test_missing_accounts_file_resolves_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    err = error_of(write(tmp_path / "etc", 'accounts_file = "accounts.csv"\n'))
    assert err.source == str(tmp_path / "etc" / "accounts.csv")
    assert "not found" in str(err)


def test_unreadable_accounts_file(tmp_path: Path) -> None:
    (tmp_path / "accounts.csv").mkdir()  # a directory: unreadable as a file, even for root
    err = error_of(write(tmp_path, 'accounts_file = "accounts.csv"\n'))
    assert err.source == str(tmp_path / "accounts.csv")
    assert "cannot read" in str(err)


def test_mask_dsn() -> None:
    assert redaction.mask_dsn("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redaction.mask_dsn("postgresql://u@h/db?password=secret&x=1") == "postgresql://u@h/db?password=***&x=1"
    assert redaction.mask_dsn("host=h password=secret dbname=x") == "host=h password=*** dbname=x"
    assert redaction.mask_dsn("postgresql://root@127.0.0.1:5432/test") == "postgresql://root@127.0.0.1:5432/test"


@pytest.mark.parametrize(("text", "csv", "where"), [
    # The columns' contents swapped: the token sits under `login`.
    ('accounts_file = "accounts.csv"\n', "ig_user_id,access_token,login\n178,facebook,plainsecretvalue42\n",
     "line 2"),
    ('accounts_file = "accounts.csv"\n', "ig_user_id,login,access_token\nplainsecretvalue42,instagram,178\n",
     "line 2"),
    ("[[accounts]]\nig_user_id = '178'\nlogin = 'plainsecretvalue42'\naccess_token = 'instagram'\n", None,
     "login"),
])
def test_a_token_in_the_wrong_place_is_not_echoed_by_the_error(tmp_path: Path, text: str, csv: str | None,
                                                                where: str) -> None:
    err = error_of(write(tmp_path, text, csv=csv))
    assert where in str(err)
    assert "plainsecretvalue42" not in str(err)
    assert "<18 characters, not shown: it looks like a token>" in str(err)
