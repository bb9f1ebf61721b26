"""The token store: Instagram Login tokens refreshed by the daemon, persisted for the next start.

Long-lived Instagram Login tokens last 60 days and can be refreshed (reference §7.3: the token must be at
least 24 h old and unexpired; the new one lasts 60 days from the refresh). The daemon refreshes each one
when it is older than `schedule.token_refresh_after_days` and keeps the records in PostgreSQL
(`collector.storage.token_table`: every instance uses the newest token, and one refreshes it, under a row
lock). `tokens.json` in `state_dir` (directory 0700, file 0600, replaced atomically) is the older home of
the records: the daemon moves it into the database on its first start.

Which token wins. Each stored record remembers a fingerprint of the *configured* token it descends from.
While the config still holds that token, the stored (refreshed, newer) one is used; when the operator puts
a different token in the config, the fingerprint no longer matches and the configured one wins (and is
refreshed in its turn). A configured token of unknown age (no record yet) is refreshed at the first
opportunity, so its expiry becomes known instead of being guessed.

Tokens are `models.Secret` everywhere in memory, registered with `redaction` when read, and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import structlog

from collector import exceptions, metrics, models, parsing, redaction, settings

log = structlog.get_logger(__name__)

FILE_NAME = "tokens.json"
FORMAT_VERSION = 1
# After a failed refresh, try again after this long (or the refresh age, if shorter): a token younger than
# 24 h is refused by Meta, and a transient failure should not turn into a tight loop.
RETRY_AFTER_FAILURE = timedelta(hours=6)

# Performs GET {instagram_base_url}/refresh_access_token?grant_type=ig_refresh_token&access_token=<token>
# for the account's current token and returns the decoded JSON body (raises a GraphError on failure).
RefreshCall = Callable[[models.Account], Awaitable[Mapping[str, object]]]

# Serialises one account's refresh between daemon instances. Entered once the store finds the refresh due,
# it brings the account's record up to date (another instance may have refreshed it already) and yields
# whether this instance may refresh it now; on exit it persists the record. Without one, the store is
# saved to its file once at the end of the round.
RefreshGuard = Callable[[models.Account], contextlib.AbstractAsyncContextManager[bool]]


def fingerprint(token: models.Secret) -> str:
    """A short, one-way name for a token: tells tokens apart without storing or logging the configured one."""
    return hashlib.sha256(token.reveal().encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRecord:
    source_fingerprint: str  # of the configured token this record descends from
    first_seen_at: datetime  # when that configured token was first seen
    token: models.Secret | None = None  # the refreshed token, when there is one
    refreshed_at: datetime | None = None
    expires_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_error: str | None = None  # token-free description of the last failed refresh

    def to_json(self) -> dict[str, object]:
        return {
            "source_fingerprint": self.source_fingerprint,
            "first_seen_at": _iso(self.first_seen_at),
            "access_token": self.token.reveal() if self.token else None,
            "refreshed_at": _iso(self.refreshed_at),
            "expires_at": _iso(self.expires_at),
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_error": self.last_error,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object], ig_user_id: str) -> TokenRecord:
        token = raw.get("access_token")
        if token is not None and not isinstance(token, str):
            raise ValueError("access_token is not a string")
        if token:
            redaction.register_secret(token, owner=ig_user_id)
        error = raw.get("last_error")
        first_seen = _parse(raw.get("first_seen_at"))
        if first_seen is None:
            raise ValueError("first_seen_at missing")
        return cls(
            source_fingerprint=str(raw["source_fingerprint"]),
            first_seen_at=first_seen,
            token=models.Secret(token) if token else None,
            refreshed_at=_parse(raw.get("refreshed_at")),
            expires_at=_parse(raw.get("expires_at")),
            last_attempt_at=_parse(raw.get("last_attempt_at")),
            last_error=error if isinstance(error, str) else None,
        )


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _parse(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO timestamp, got {type(value).__name__}")
    return datetime.fromisoformat(value)


class TokenStore:
    """The refreshed tokens, per ig_user_id, in `<state_dir>/tokens.json`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._records: dict[str, TokenRecord] = {}

    def load(self) -> None:
        """Read the file (absent: empty store). A damaged file is a ConfigError: silently starting from the
        configured tokens could use tokens that expired long ago."""
        try:
            raw = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            self._records = {}
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            raise exceptions.ConfigError(f"cannot read the token store: {exc}",
                                         source=str(self.path)) from exc
        try:
            if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format (expected version {FORMAT_VERSION})")
            accounts = raw.get("accounts")
            if not isinstance(accounts, dict):
                raise ValueError("accounts is not an object")
            self._records = {str(k): TokenRecord.from_json(v, str(k)) for k, v in accounts.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise exceptions.ConfigError(f"damaged token store: {exc}", source=str(self.path)) from exc

    def save(self) -> None:
        """Write atomically: a temp file (0600) in the same directory, fsync, rename over the old file."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = orjson.dumps({"version": FORMAT_VERSION,
                             "accounts": {k: r.to_json() for k, r in sorted(self._records.items())}},
                            option=orjson.OPT_INDENT_2)
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", suffix=".tmp", dir=directory)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def record(self, ig_user_id: str) -> TokenRecord | None:
        return self._records.get(ig_user_id)

    def put(self, ig_user_id: str, record: TokenRecord) -> None:
        """Adopt a record read from elsewhere (the database)."""
        self._records[ig_user_id] = record

    def records(self) -> dict[str, TokenRecord]:
        return dict(self._records)

    def observe(self, account: models.Account, now: datetime) -> TokenRecord:
        """The record for the account's configured token, starting a new one when the configured token is
        new or changed (a changed configured token is newer than anything stored)."""
        fp = fingerprint(account.access_token)
        current = self._records.get(account.ig_user_id)
        if current is None or current.source_fingerprint != fp:
            current = TokenRecord(source_fingerprint=fp, first_seen_at=now)
            self._records[account.ig_user_id] = current
        return current

    def effective(self, account: models.Account) -> models.Account:
        """The account with the token to use: the stored refreshed one when it descends from the configured
        token, else the configured one."""
        current = self._records.get(account.ig_user_id)
        if current is None or current.token is None:
            return account
        if current.source_fingerprint != fingerprint(account.access_token):
            return account
        return dataclasses.replace(account, access_token=current.token)

    def forget_except(self, ig_user_ids: Iterable[str]) -> None:
        """Drop records of accounts no longer configured (a removed account's token is not kept)."""
        keep = set(ig_user_ids)
        for key in [k for k in self._records if k not in keep]:
            del self._records[key]

    def refresh_due(self, account: models.Account, now: datetime,
                    schedule: settings.ScheduleSettings) -> bool:
        if account.login != "instagram":
            return False  # Facebook Login page tokens do not expire this way (§7.3)
        current = self.observe(account, now)
        after = timedelta(days=schedule.token_refresh_after_days)
        if current.last_error is not None and current.last_attempt_at is not None \
                and now - current.last_attempt_at < min(RETRY_AFTER_FAILURE, after):
            return False
        if current.refreshed_at is None:
            return True  # unknown age: refresh now, so the expiry is known
        return now - current.refreshed_at >= after

    def refreshed(self, account: models.Account, now: datetime, body: Mapping[str, object]) -> models.Account:
        """Record a successful refresh answer; returns the account carrying the new token."""
        token = body.get("access_token")
        expires_in = body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise exceptions.GraphApiError("refresh_access_token answered without an access_token")
        redaction.register_secret(token, owner=account.ig_user_id)
        seconds = parsing.positive_number(expires_in)
        expires_at = None if seconds is None else now + timedelta(seconds=seconds)
        current = self.observe(account, now)
        self._records[account.ig_user_id] = dataclasses.replace(
            current, token=models.Secret(token), refreshed_at=now, expires_at=expires_at,
            last_attempt_at=now, last_error=None)
        return dataclasses.replace(account, access_token=models.Secret(token))

    def failed(self, account: models.Account, now: datetime, detail: str) -> None:
        current = self.observe(account, now)
        self._records[account.ig_user_id] = dataclasses.replace(current, last_attempt_at=now,
                                                                last_error=detail)

    def expiry_days(self, account: models.Account, now: datetime) -> float | None:
        current = self._records.get(account.ig_user_id)
        if current is None or current.expires_at is None \
                or current.source_fingerprint != fingerprint(account.access_token):
            return None
        return (current.expires_at - now).total_seconds() / 86400.0


async def refresh_round(store: TokenStore, accounts: Iterable[models.Account], now: datetime, *,
                        schedule: settings.ScheduleSettings, call: RefreshCall,
                        counters: metrics.Metrics,
                        guard: RefreshGuard | None = None) -> dict[str, models.Account]:
    """Refresh every due token, one call at a time (a handful per day), persist (through `guard`, else by
    saving the store once if anything changed), and update the expiry gauge. Returns the accounts whose
    token changed, by ig_user_id, carrying their new token. A failure is recorded and logged (without the
    token) and the other accounts go on."""
    changed: dict[str, models.Account] = {}
    dirty = False
    for configured in accounts:
        if store.refresh_due(configured, now, schedule):
            if guard is None:
                dirty = True
                await _refresh_one(store, configured, now, call, changed)
            else:
                async with guard(configured) as ours:
                    if ours and store.refresh_due(configured, now, schedule):  # still due once up to date
                        await _refresh_one(store, configured, now, call, changed)
        days = store.expiry_days(configured, now)
        if days is not None:
            counters.token_expiry_days.labels(ig_user_id=configured.ig_user_id).set(days)
    if dirty:
        await asyncio.to_thread(store.save)
    return changed


async def _refresh_one(store: TokenStore, configured: models.Account, now: datetime, call: RefreshCall,
                       changed: dict[str, models.Account]) -> None:
    current = store.effective(configured)
    try:
        body = await call(current)
        # `refreshed` is keyed by the configured token, so a later restart finds the record.
        store.refreshed(configured, now, body)
    except exceptions.GraphError as exc:
        store.failed(configured, now, exc.describe())
        log.warning("token_refresh_failed", ig_user_id=configured.ig_user_id, detail=exc.describe())
    else:
        changed[configured.ig_user_id] = store.effective(configured)
        log.info("token_refreshed", ig_user_id=configured.ig_user_id,
                 expires_in_days=_round(store.expiry_days(configured, now)))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
