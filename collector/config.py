"""Loading and validating the TOML config and the accounts CSV into `settings.Config`.

This is the one boundary where tomllib, csv and file-system errors are translated into `ConfigError`.
Every problem names where it is: ``config.toml: [graph] request_timeout_s: expected a number, got string
'30'`` or ``accounts.csv: line 12: ...``. Config keys are the field names of the `settings` dataclasses, so a
new setting needs no loader change; only values with structure (secrets, metric tables, media tiers) are
handled by name. Relative paths resolve against the config file's folder, never the working directory, so a
systemd unit and an operator's shell read the same files.

Every secret read here (tokens, app secrets, a database password) is registered with `redaction` before
anything else can log it.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

from collector import catalogue, exceptions, models, redaction, settings

_SECTIONS: dict[str, type] = {
    "database": settings.DatabaseSettings,
    "graph": settings.GraphSettings,
    "rate_limit": settings.RateLimitSettings,
    "retry": settings.RetrySettings,
    "collect": settings.CollectSettings,
    "schedule": settings.ScheduleSettings,
    "http": settings.HttpSettings,
    "webhook": settings.WebhookSettings,
    "log": settings.LogSettings,
    "app": settings.AppSettings,
    "cluster": settings.ClusterSettings,
    "retention": settings.RetentionSettings,
}
_TOP_LEVEL = frozenset({"accounts_file", "state_dir", "accounts", "tokens", *_SECTIONS})
_TOKEN_KEYS = ("access_token", "access_token_env", "access_token_file")
_CSV_TOKEN_COLUMNS = ("access_token", "access_token_env")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TIMEFRAMES = ("this_month", "this_week", "last_14_days", "last_30_days", "last_90_days", "prev_month")
_BIGINT_MAX = 2**63 - 1
_TIER_KEYS = frozenset({"max_age_h", "every_h"})

# Settings that are meaningless at zero; every other number only has to be non-negative.
_POSITIVE = frozenset({
    "database.pool_max_size", "database.connect_timeout_s", "graph.request_timeout_s",
    "graph.max_concurrency",
    "rate_limit.account_burst", "rate_limit.min_rate_fraction", "rate_limit.slow_down_at_pct",
    "rate_limit.usage_max_age_s", "rate_limit.account_max_in_flight",
    "retry.max_attempts", "retry.throttle_max_attempts", "collect.media_max_age_days",
    "collect.max_concurrent_accounts", "collect.media_concurrency_per_account", "schedule.tick_s",
    "collect.discovery_interval_s",
    "schedule.media_discovery_interval_s", "schedule.stories_interval_s", "schedule.profile_interval_s",
    "schedule.demographics_interval_s", "webhook.body_max_bytes", "cluster.lease_s",
    "retention.history_days", "retention.history_full_days",
})
_AT_MOST = {"rate_limit.min_rate_fraction": 1.0, "rate_limit.slow_down_at_pct": 100.0,
            "schedule.jitter_fraction": 1.0}


def load(path: Path, *, require_accounts: bool = True) -> settings.Config:
    """Read, validate and return the config at `path` (and its accounts file). Raises `ConfigError`.
    `require_accounts=False` accepts a config without accounts or tokens (`token exchange` needs only
    [app] and [graph])."""
    return _Loader(path, require_accounts=require_accounts).load()


def database_target(config: settings.Config) -> str:
    """Which database the collector will use, password masked (check-config, logs)."""
    if config.database.url:
        return redaction.mask_dsn(config.database.url)
    env = os.environ.get("DATABASE_URL")
    if env:
        return f"$DATABASE_URL ({redaction.mask_dsn(env)})"
    return f"embedded PostgreSQL in {config.database.embedded_dir}"


def summary(config: settings.Config) -> list[str]:
    """A short, token-free description of a validated config, one line per topic (check-config)."""
    by_login = {login: 0 for login in models.LOGINS}
    by_origin: dict[str, int] = {}
    for account in config.accounts:
        by_login[account.login] += 1
        origin = "[[accounts]]" if "[[accounts]]" in account.source else account.source.rsplit(" line ", 1)[0]
        by_origin[origin] = by_origin.get(origin, 0) + 1
    logins = ", ".join(f"{login} {n}" for login, n in by_login.items())
    origins = ", ".join(f"{n} from {origin}" for origin, n in by_origin.items())
    hook = config.webhook
    if hook is None:
        webhook = "off"
    elif hook.listen or config.http.listen:
        webhook = f"{hook.path} on {hook.listen or 'the [http] listener'}"
    else:  # the daemon warns `webhook_not_served` and serves none
        webhook = "not served (neither [webhook] listen nor [http] listen is set)"
    collect = config.collect
    return [
        f"config: {config.source}",
        f"accounts: {len(config.accounts)} ({logins}; {origins})",
        f"database: {database_target(config)}",
        f"state_dir: {config.state_dir}",
        f"graph: {config.graph.api_version}, instagram {config.graph.instagram_base_url}, "
        f"facebook {config.graph.facebook_base_url}",
        f"collect: backfill {collect.account_backfill_days} days, media up to "
        f"{collect.media_max_age_days} days, {collect.max_concurrent_accounts} accounts at once",
        f"http: {config.http.listen or 'off'}; webhook: {webhook}",
        *(f"tokens: {token.label}: discovers the accounts it reaches" for token in config.tokens),
    ]


def _toml_type(value: object) -> str:
    """The TOML name of a value's type, for messages."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


# A value shaped like a secret: a long run of token characters mixing letters and digits. A token pasted into
# the wrong CSV column or key must not be echoed by the error that says the value is wrong (registered
# secrets and Meta's token shapes are masked anyway; this catches any other token).
_SECRET_SHAPED = re.compile(r"(?=[A-Za-z_\-]*[0-9])(?=[0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{12,}")


def _shown(value: object) -> str:
    """`value` as an error message quotes it: its repr, shortened; a string shaped like a secret only by its
    length."""
    if isinstance(value, str) and _SECRET_SHAPED.fullmatch(value.strip()):
        return f"<{len(value)} characters, not shown: it looks like a token>"
    text = redaction.redact(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


class _Loader:
    def __init__(self, path: Path, *, require_accounts: bool = True) -> None:
        self.path = path
        self.require_accounts = require_accounts
        self.name = str(path)
        self.base = path.parent
        self.secrets: list[str] = []

    # -- locations -----------------------------------------------------------------------------------------

    def at(self, section: str | None, key: str | None = None) -> str:
        where = f"[{section}]" if section else ""
        if key:
            where = f"{where} {key}".strip()
        return f"{self.name}: {where}" if where else self.name

    def fail(self, source: str, message: str) -> exceptions.ConfigError:
        return exceptions.ConfigError(message, source=source)

    # -- top level -----------------------------------------------------------------------------------------

    def load(self) -> settings.Config:
        data = self.read_toml()
        unknown = sorted(set(data) - _TOP_LEVEL)
        if unknown:
            raise self.fail(self.name, f"unknown key(s) {', '.join(unknown)} (expected some of "
                                       f"{', '.join(sorted(_TOP_LEVEL))})")
        state_dir = self.path_value(data, "state_dir") or self.resolve(Path(".state"))
        accounts_file = self.path_value(data, "accounts_file")
        sections: dict[str, object] = {}
        for name, cls in _SECTIONS.items():
            table = data.get(name)
            if table is None:
                if name == "webhook":
                    continue  # no [webhook] section: webhooks are off
                table = {}
            if not isinstance(table, dict):
                raise self.fail(self.at(None, name), f"expected a table [{name}], got {_toml_type(table)}")
            sections[name] = self.section(name, cls, table)
        database = typing.cast(settings.DatabaseSettings, sections["database"])
        if "embedded_dir" not in typing.cast(dict[str, object], data.get("database", {})):
            # The embedded PostgreSQL lives with the rest of the state unless placed elsewhere on purpose.
            database = dataclasses.replace(database, embedded_dir=state_dir / "postgres")
        sections["database"] = database
        self.check_basic_auth(typing.cast(settings.HttpSettings, sections["http"]))
        self.check_retention(typing.cast(settings.RetentionSettings, sections["retention"]))
        # A password in the DSN is a secret like any token ($DATABASE_URL counts: storage will use it).
        dsn = database.url or os.environ.get("DATABASE_URL")
        if dsn:
            self.register_dsn_password(dsn)

        accounts: list[models.Account] = []
        seen: dict[str, str] = {}
        inline = data.get("accounts", [])
        if not isinstance(inline, list):
            raise self.fail(self.at(None, "accounts"), f"expected an array of tables [[accounts]], "
                                                       f"got {_toml_type(inline)}")
        for index, entry in enumerate(inline, start=1):
            accounts.append(self.inline_account(index, entry))
        if accounts_file is not None:
            accounts.extend(_read_accounts_csv(accounts_file, self.secrets))
        token_tables = data.get("tokens", [])
        if not isinstance(token_tables, list):
            raise self.fail(self.at(None, "tokens"), f"expected an array of tables [[tokens]], "
                                                     f"got {_toml_type(token_tables)}")
        token_sources = tuple(self.token_source(index, entry) for index, entry in enumerate(token_tables, 1))
        if not accounts and not token_sources and self.require_accounts:
            raise self.fail(self.name, "no accounts configured: add [[accounts]] tables, an accounts_file "
                                       "or [[tokens]] to discover them from")
        for account in accounts:
            earlier = seen.setdefault(account.ig_user_id, account.source)
            if earlier != account.source:
                raise self.fail(self.name, f"duplicate account: ig_user_id {account.ig_user_id} is "
                                           f"configured twice, at {earlier} and at {account.source}")

        for secret in self.secrets:
            redaction.register_secret(secret)
        return settings.Config(
            source=self.path, accounts=tuple(accounts), accounts_file=accounts_file, tokens=token_sources,
            state_dir=state_dir,
            **sections,  # type: ignore[arg-type]  # keys and types follow _SECTIONS
        )

    def check_basic_auth(self, http: settings.HttpSettings) -> None:
        """`[http] basic_auth_user` and a `basic_auth_password*` go together: one without the other would
        silently leave the web UI open."""
        if (http.basic_auth_user is None) != (http.basic_auth_password is None):
            key = "basic_auth_password" if http.basic_auth_password is None else "basic_auth_user"
            raise self.fail(self.at("http", key), "basic auth needs both basic_auth_user and one of "
                                                  "basic_auth_password, basic_auth_password_env, "
                                                  "basic_auth_password_file")

    def check_retention(self, retention: settings.RetentionSettings) -> None:
        full, keep = retention.history_full_days, retention.history_days
        if full is not None and keep is not None and full >= keep:
            raise self.fail(self.at("retention", "history_full_days"),
                            f"must be less than history_days ({keep}), got {full}: rows are dropped before "
                            "they would be downsampled")

    def read_toml(self) -> dict[str, object]:
        try:
            with self.path.open("rb") as f:
                return tomllib.load(f)
        except FileNotFoundError as exc:
            raise self.fail(self.name, "config file not found") from exc
        except OSError as exc:
            raise self.fail(self.name, f"cannot read the config file: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise self.fail(self.name, f"invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise self.fail(self.name, "invalid TOML: the file is not UTF-8") from exc

    def path_value(self, table: Mapping[str, object], key: str) -> Path | None:
        """A top-level path key, resolved against the config's folder; None when absent."""
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, str) or not value:
            raise self.fail(self.at(None, key), f"expected a path (string), got {_toml_type(value)} "
                                                f"{_shown(value)}")
        return self.resolve(Path(value))

    def resolve(self, path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else self.base / path

    def register_dsn_password(self, dsn: str) -> None:
        password = urllib.parse.urlsplit(dsn).password if "://" in dsn else None
        if password:
            self.secrets.append(urllib.parse.unquote(password))

    # -- sections ------------------------------------------------------------------------------------------

    def section(self, name: str, cls: type, table: Mapping[str, object]) -> object:
        hints = typing.get_type_hints(cls)
        accepted: set[str] = set()
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if hint in (models.Secret, models.Secret | None):
                keys = (f.name, f"{f.name}_env", f"{f.name}_file")
                accepted.update(keys)
                secret = self.secret(table, self.at(name), keys, required=required)
                if secret is not None:
                    values[f.name] = secret
                continue
            accepted.add(f.name)
            if f.name not in table:
                if required:
                    raise self.fail(self.at(name, f.name), "missing required key")
                continue
            source = self.at(name, f.name)
            special = _SPECIAL.get((name, f.name))
            if special is not None:
                values[f.name] = special(self, source, table[f.name])
            else:
                values[f.name] = self.scalar(source, f"{name}.{f.name}", hint, table[f.name])
        unknown = sorted(set(table) - accepted)
        if unknown:
            expected = ", ".join(sorted(accepted))
            raise self.fail(self.at(name, unknown[0]), f"unknown key (expected one of {expected})")
        return cls(**values)

    def scalar(self, source: str, dotted: str, hint: object, value: object) -> object:
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
        got = f"got {_toml_type(value)} {_shown(value)}"
        if base is bool:
            if not isinstance(value, bool):
                raise self.fail(source, f"expected true or false, {got}")
            return value
        if base is int or base is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(source, f"expected a number, {got}")
            if base is int and not isinstance(value, int):
                raise self.fail(source, f"expected a whole number, {got}")
            if math.isnan(value) or value < 0 or (dotted in _POSITIVE and value == 0):
                bound = "greater than 0" if dotted in _POSITIVE else "0 or more"
                raise self.fail(source, f"must be {bound}, {got}")
            if dotted in _AT_MOST and value > _AT_MOST[dotted]:
                raise self.fail(source, f"must be at most {_AT_MOST[dotted]:g}, {got}")
            return float(value) if base is float else value
        if base is Path:
            if not isinstance(value, str) or not value:
                raise self.fail(source, f"expected a path (string), {got}")
            return self.resolve(Path(value))
        if base is str:
            if not isinstance(value, str):
                raise self.fail(source, f"expected a string, {got}")
            check = _STRING_CHECKS.get(dotted)
            return value if check is None else check(self, source, value)
        raise self.fail(source, f"unsupported setting type {hint!r}")  # a settings field without a loader

    def secret(self, table: Mapping[str, object], section_at: str, keys: tuple[str, str, str], *,
               required: bool) -> models.Secret | None:
        """Exactly one of `name`, `name_env`, `name_file`; the value never appears in a message."""
        given = [k for k in keys if k in table]
        where = f"{section_at} {keys[0]}"
        if len(given) > 1:
            raise self.fail(where, f"give only one of {', '.join(keys)} (found {', '.join(given)})")
        if not given:
            if required:
                raise self.fail(where, f"missing: give one of {', '.join(keys)}")
            return None
        key = given[0]
        value = table[key]
        source = f"{section_at} {key}"
        if not isinstance(value, str) or not value.strip():
            raise self.fail(source, f"expected a non-empty string, got {_toml_type(value)}")
        secret = _secret_from(key, value, self.resolve, source)
        self.secrets.append(secret.reveal())
        return secret

    # -- accounts ------------------------------------------------------------------------------------------

    def inline_account(self, index: int, entry: object) -> models.Account:
        origin = f"{self.name} [[accounts]] #{index}"
        at = f"{self.name}: [[accounts]] #{index}"
        if not isinstance(entry, dict):
            raise self.fail(at, f"expected a table, got {_toml_type(entry)}")
        unknown = sorted(set(entry) - {"ig_user_id", "login", *_TOKEN_KEYS})
        if unknown:
            raise self.fail(f"{at} {unknown[0]}", "unknown key (expected ig_user_id, login and one of "
                                                  f"{', '.join(_TOKEN_KEYS)})")
        for key in ("ig_user_id", "login"):
            if key not in entry:
                raise self.fail(f"{at} {key}", "missing required key")
        raw_id = entry["ig_user_id"]
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)  # TOML integers hold every Graph id exactly; accept them
        if not isinstance(raw_id, str):
            raise self.fail(f"{at} ig_user_id", f"expected a string of digits, got {_toml_type(raw_id)}")
        problem = id_problem(raw_id)
        if problem:
            raise self.fail(f"{at} ig_user_id", problem)
        login = self.entry_login(entry, at)
        token, _, _ = self.entry_token(entry, at)
        return models.Account(ig_user_id=raw_id, login=login, access_token=token, source=origin)

    def entry_login(self, entry: Mapping[str, object], at: str) -> models.Login:
        login = entry["login"]
        if login not in models.LOGINS:
            raise self.fail(f"{at} login", f"unknown login {_shown(login)} (expected one of "
                                           f"{', '.join(models.LOGINS)})")
        return login  # narrowed by the membership test

    def entry_token(self, entry: Mapping[str, object], at: str) -> tuple[models.Secret, str, str]:
        """The token of an [[accounts]] or [[tokens]] table: exactly one of access_token, access_token_env,
        access_token_file. Returns (token, the key given, its value as written: the token itself for
        access_token, so only the key may be shown then)."""
        given = [k for k in _TOKEN_KEYS if k in entry]
        if len(given) != 1:
            what = "missing" if not given else f"found {', '.join(given)}"
            raise self.fail(f"{at} access_token", f"give exactly one of {', '.join(_TOKEN_KEYS)} ({what})")
        value = entry[given[0]]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{at} {given[0]}", f"expected a non-empty string, got {_toml_type(value)}")
        token = _secret_from(given[0], value, self.resolve, f"{at} {given[0]}")
        self.secrets.append(token.reveal())
        return token, given[0], value

    # -- tokens --------------------------------------------------------------------------------------------

    def token_source(self, index: int, entry: object) -> models.TokenSource:
        """One [[tokens]] table: login and a token given as for [[accounts]]."""
        at = f"{self.name}: [[tokens]] #{index}"
        if not isinstance(entry, dict):
            raise self.fail(at, f"expected a table, got {_toml_type(entry)}")
        unknown = sorted(set(entry) - {"login", *_TOKEN_KEYS})
        if unknown:
            raise self.fail(f"{at} {unknown[0]}", f"unknown key (expected login and one of "
                                                  f"{', '.join(_TOKEN_KEYS)})")
        if "login" not in entry:
            raise self.fail(f"{at} login", "missing required key")
        login = self.entry_login(entry, at)
        token, key, value = self.entry_token(entry, at)
        return models.TokenSource(position=index, login=login, access_token=token, key=key,
                                  reference=None if key == "access_token" else value)


def id_problem(ig_user_id: str) -> str | None:
    if not ig_user_id.isascii() or not ig_user_id.isdigit():
        return f"ig_user_id must be all digits, got {_shown(ig_user_id)}"
    # Stored as bigint and compared as id::text, so the text must round-trip through an integer.
    if ig_user_id.startswith("0") or int(ig_user_id) > _BIGINT_MAX:
        return f"ig_user_id {ig_user_id} is not a valid Graph id (leading zero or too large)"
    return None


def _secret_from(key: str, value: str, resolve: Callable[[Path], Path], source: str) -> models.Secret:
    """The secret named by `key`: the value itself, an environment variable, or a file's stripped content."""
    if key.endswith("_env"):
        secret = os.environ.get(value, "").strip()
        if not secret:
            raise exceptions.ConfigError(f"environment variable {value} is not set or empty", source=source)
        return models.Secret(secret)
    if key.endswith("_file"):
        path = resolve(Path(value))
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise exceptions.ConfigError(f"cannot read {path}: {exc.strerror}", source=source) from exc
        except UnicodeDecodeError as exc:
            raise exceptions.ConfigError(f"{path} is not UTF-8 text", source=source) from exc
        if not secret:
            raise exceptions.ConfigError(f"{path} is empty", source=source)
        return models.Secret(secret)
    return models.Secret(value.strip())


def _read_accounts_csv(path: Path, secrets: list[str]) -> list[models.Account]:
    """Accounts from a CSV with header ig_user_id,login,access_token (or access_token_env), any column order.

    Blank lines and lines starting with `#` are skipped. Built for 10,000+ rows: one pass, no per-row regex.
    """
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets like to prepend a BOM
    except FileNotFoundError as exc:
        raise exceptions.ConfigError("accounts file not found", source=name) from exc
    except OSError as exc:
        raise exceptions.ConfigError(f"cannot read the accounts file: {exc.strerror}", source=name) from exc
    except UnicodeDecodeError as exc:
        raise exceptions.ConfigError("the accounts file is not UTF-8 text", source=name) from exc
    reader = csv.reader(text.splitlines())
    header, token_column = _csv_header(reader, name)
    i_id, i_login, i_token = header.index("ig_user_id"), header.index("login"), header.index(token_column)
    from_env = token_column.endswith("_env")
    width = len(header)
    accounts: list[models.Account] = []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()) or row[0].lstrip().startswith("#"):
            continue
        line = reader.line_num
        if len(row) != width:
            raise exceptions.ConfigError(f"expected {width} columns ({','.join(header)}), found {len(row)}",
                                         source=f"{name}: line {line}")
        ig_user_id, login, token = row[i_id].strip(), row[i_login].strip(), row[i_token].strip()
        problem = id_problem(ig_user_id)
        if problem is None and login not in models.LOGINS:
            problem = f"unknown login {_shown(login)} (expected one of {', '.join(models.LOGINS)})"
        if problem is None and not token:
            problem = f"empty {token_column}"
        if problem is not None:
            raise exceptions.ConfigError(problem, source=f"{name}: line {line}")
        if from_env:
            value = os.environ.get(token, "").strip()
            if not value:
                raise exceptions.ConfigError(f"environment variable {token} is not set or empty",
                                             source=f"{name}: line {line}")
            token = value
        secrets.append(token)
        accounts.append(models.Account(ig_user_id=ig_user_id, login=typing.cast(models.Login, login),
                                       access_token=models.Secret(token), source=f"{name} line {line}"))
    return accounts


def _csv_header(reader: typing.Any, name: str) -> tuple[list[str], str]:
    """The header row (first non-blank, non-comment line) and its token column; raises on a bad header."""
    header: list[str] | None = None
    for row in reader:
        if row and any(row) and not row[0].lstrip().startswith("#"):
            header = [cell.strip() for cell in row]
            break
    if header is None:
        raise exceptions.ConfigError("the accounts file is empty (expected a header line "
                                     "ig_user_id,login,access_token)", source=name)
    missing = [c for c in ("ig_user_id", "login") if c not in header]
    tokens = [c for c in header if c in _CSV_TOKEN_COLUMNS]
    unknown = [c for c in header if c not in ("ig_user_id", "login", *_CSV_TOKEN_COLUMNS)]
    if missing or len(tokens) != 1 or unknown or len(set(header)) != len(header):
        problems = [f"missing column(s) {', '.join(missing)}"] if missing else []
        if len(tokens) != 1:
            problems.append(f"needs exactly one of the columns {', '.join(_CSV_TOKEN_COLUMNS)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        if len(set(header)) != len(header):
            problems.append("repeated column names")
        raise exceptions.ConfigError(f"bad header: {'; '.join(problems)} (expected "
                                     "ig_user_id,login,access_token or ig_user_id,login,access_token_env)",
                                     source=f"{name}: line {reader.line_num}")
    return header, tokens[0]


# -- values with structure, by (section, key) ------------------------------------------------------------


def _metrics_table(loader: _Loader, source: str, value: object) -> dict[str, tuple[str, ...]]:
    """`[collect.metrics]`: keys like "media.FEED" (quoted, or written as dotted keys / sub-tables)."""
    if not isinstance(value, dict):
        raise loader.fail(source, f"expected a table, got {_toml_type(value)}")
    flat: dict[str, object] = {}
    for key, item in value.items():
        if isinstance(item, dict):  # media.FEED = [...] unquoted is the table {"media": {"FEED": [...]}}
            flat.update({f"{key}.{sub}": v for sub, v in item.items()})
        else:
            flat[key] = item
    result: dict[str, tuple[str, ...]] = {}
    for key, names in flat.items():
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise loader.fail(f"{source}.{key}", "expected a non-empty array of metric names")
        result[key] = tuple(typing.cast(list[str], names))
    problems = catalogue.validate_overrides(result)
    if problems:
        raise loader.fail(source, "; ".join(problems))
    return result


def _media_tiers(loader: _Loader, source: str, value: object) -> tuple[tuple[float, float], ...]:
    """`media_tiers = [{max_age_h = 48, every_h = 1}, ..., {every_h = 168}]`: ascending ages; the last tier
    may omit max_age_h (no upper bound). Stored in seconds like the rest of ScheduleSettings."""
    if not isinstance(value, list) or not value:
        raise loader.fail(source, "expected a non-empty array of tables {max_age_h = ..., every_h = ...}")
    tiers: list[tuple[float, float]] = []
    for index, tier in enumerate(value, start=1):
        at = f"{source} #{index}"
        if not isinstance(tier, dict):
            raise loader.fail(at, f"expected a table {{max_age_h = ..., every_h = ...}}, "
                                  f"got {_toml_type(tier)}")
        unknown = sorted(set(tier) - _TIER_KEYS)
        if unknown:
            raise loader.fail(at, f"unknown key {unknown[0]} (expected max_age_h, every_h)")
        last = index == len(value)
        if "every_h" not in tier or ("max_age_h" not in tier and not last):
            raise loader.fail(at, "every tier needs every_h, and all but the last need max_age_h")
        numbers = [tier["every_h"], tier.get("max_age_h", float("inf"))]
        if any(isinstance(n, bool) or not isinstance(n, int | float) or not n > 0 for n in numbers):
            raise loader.fail(at, "max_age_h and every_h must be numbers greater than 0")
        every_h, max_age_h = (float(typing.cast(float, n)) for n in numbers)
        if tiers and max_age_h * 3600.0 <= tiers[-1][0]:
            raise loader.fail(at, "max_age_h must grow from one tier to the next")
        tiers.append((max_age_h * 3600.0, every_h * 3600.0))
    return tuple(tiers)


def _check_version(loader: _Loader, source: str, value: str) -> str:
    if not re.fullmatch(r"v\d+\.\d+", value):
        raise loader.fail(source, f"expected a Graph API version like 'v24.0', got {_shown(value)}")
    return value


def _check_url(loader: _Loader, source: str, value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise loader.fail(source, f"expected an http(s) URL, got {_shown(value)}")
    return value.rstrip("/")


def _check_listen(loader: _Loader, source: str, value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise loader.fail(source, f"expected host:port such as '127.0.0.1:9464', got {_shown(value)}")
    return value


def _check_basic_auth_user(loader: _Loader, source: str, value: str) -> str:
    if not value or ":" in value or not value.isprintable():
        raise loader.fail(source, f"expected a non-empty user name without ':', got {_shown(value)}")
    return value


def _check_level(loader: _Loader, source: str, value: str) -> str:
    if value.lower() not in _LOG_LEVELS:
        raise loader.fail(source, f"unknown level {_shown(value)} (expected one of {', '.join(_LOG_LEVELS)})")
    return value.lower()


def _check_timeframe(loader: _Loader, source: str, value: str) -> str:
    if value not in _TIMEFRAMES:
        expected = ", ".join(_TIMEFRAMES)
        raise loader.fail(source, f"unknown timeframe {_shown(value)} (expected one of {expected})")
    return value


def _check_path(loader: _Loader, source: str, value: str) -> str:
    if not value.startswith("/"):
        raise loader.fail(source, f"expected a URL path starting with '/', got {_shown(value)}")
    return value


def _check_app_id(loader: _Loader, source: str, value: str) -> str:
    if not value.isascii() or not value.isdigit():
        raise loader.fail(source, f"expected the app id as a string of digits, got {_shown(value)}")
    return value


def _check_dsn(loader: _Loader, source: str, value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        # Never echo the value: a DSN may carry a password.
        raise loader.fail(source, "expected a URL starting with postgresql://")
    return value


_SPECIAL: dict[tuple[str, str], Callable[[_Loader, str, object], object]] = {
    ("collect", "metrics"): _metrics_table,
    ("schedule", "media_tiers"): _media_tiers,
}
def _check_instance_id(loader: _Loader, source: str, value: str) -> str:
    if not _INSTANCE_ID.fullmatch(value):
        raise loader.fail(source, f"expected 1-100 letters, digits or . _ : @ -, got {value!r}")
    return value


_INSTANCE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,100}")

_STRING_CHECKS: dict[str, Callable[[_Loader, str, str], str]] = {
    "cluster.instance_id": _check_instance_id,
    "database.url": _check_dsn,
    "graph.api_version": _check_version,
    "graph.instagram_base_url": _check_url,
    "graph.facebook_base_url": _check_url,
    "http.listen": _check_listen,
    "http.basic_auth_user": _check_basic_auth_user,
    "webhook.listen": _check_listen,
    "webhook.path": _check_path,
    "log.level": _check_level,
    "collect.demographics_timeframe": _check_timeframe,
    "app.app_id": _check_app_id,
}

