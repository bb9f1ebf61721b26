"""The `story_insights` webhook receiver (Facebook Login only, graph-api.md §8).

Stories keep insights for 24 hours; when one expires Meta pushes its final numbers here. The receiver
verifies the subscription handshake, authenticates every delivery with the app secret before looking at
it, and hands the numbers to the same `Writer` the poller uses, so a story's metrics land in `ig_media`,
`ig_media_insight` and its history exactly as polled ones do.

Decisions (documented for operators in docs/webhooks.md):
- Acknowledge once stored: a delivery is answered 200 only after its rows are *committed*, so a crash
  right after the answer loses nothing (Meta does not resend what it saw acknowledged). Waiting for the
  commit makes the writer write at once, and concurrent deliveries share its transactions (group commit,
  `Writer.wait_committed`). A full writer buffer answers 503 after `enqueue_timeout_s`, a commit that
  does not come within `commit_timeout_s` (database down) 503 too, so that Meta retries later instead of
  holding connections open; the rows stay in the writer and a retry is idempotent.
- A whole delivery is validated before anything of it is stored: one malformed change is a 400 and
  nothing of that delivery is written.
- A metric value of -1 (one source says values under 5 come as -1, unconfirmed) is recorded in
  `ig_unavailable` as `not_enough_viewers`; any other negative value as `no_data`. Neither is stored as a
  metric value: absent data is never stored as a number.
- Deliveries for accounts not in the config are acknowledged (so Meta stops retrying), logged, counted,
  and not stored.
- Duplicates (Meta retries and repeats for 36 hours) are idempotent in the database; a bounded memory of
  recently enqueued changes also skips the writer for them and counts them as `duplicate` (answered,
  like the original, once the original's rows are committed).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import structlog
from aiohttp import web

from collector import exceptions, metrics, models, parsing, settings

if TYPE_CHECKING:  # annotation only: the receiver just calls `add`
    from collector.storage import writer as storage_writer

log = structlog.get_logger("collector.webhook")

FIELD = "story_insights"
SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_PREFIX = "sha256="

_BIGINT_MAX = 2**63 - 1  # ids are bigint columns; a larger one would fail the writer's COPY for everyone
_GRAPH_ID = re.compile(r"[0-9]{1,19}")
# Metric names as Meta spells them; anything else in `value` is not a metric and is skipped.
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MS_THRESHOLD = 100_000_000_000  # entry.time above this is milliseconds (year 5138 in seconds)
_CHALLENGE_MAX_CHARS = 256
_NOT_ENOUGH_VIEWERS = -1


class Outcome:
    """Label values of `metrics.webhook_deliveries`. Rejected requests count once per request; accepted
    deliveries count once per change (an accepted delivery with no change counts `empty`)."""

    VERIFY_OK = "verify_ok"
    VERIFY_FAILED = "verify_failed"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    TOO_LARGE = "too_large"
    READ_TIMEOUT = "read_timeout"
    MALFORMED = "malformed"
    BUSY = "busy"
    EMPTY = "empty"
    STORED = "stored"
    DUPLICATE = "duplicate"
    UNKNOWN_ACCOUNT = "unknown_account"
    IGNORED_FIELD = "ignored_field"
    IGNORED_OBJECT = "ignored_object"


class MalformedDelivery(exceptions.CollectorError):
    """The webhook delivery is not a well-formed Instagram payload."""


class StoryInsights(NamedTuple):
    """One `story_insights` change: the story's final numbers."""

    ig_user_id: int
    media_id: int
    values: dict[str, models.Number]  # metric name -> value as Meta sent it (negative = unavailable)
    event_time: datetime | None  # entry.time, when Meta produced the change


class OtherChange(NamedTuple):
    """A change of a field the collector does not store (acknowledged and ignored)."""

    ig_user_id: int
    field: str


class Delivery(NamedTuple):
    object: str
    changes: list[StoryInsights | OtherChange]


class Rows(NamedTuple):
    media: list[models.MediaRow]
    insights: list[models.MediaInsightRow]
    unavailable: list[models.UnavailableRow]


def verify_signature(app_secret: bytes, body: bytes, header: str | None) -> str | None:
    """None when `header` is a valid `sha256=<hex>` HMAC of `body`, else the rejecting outcome.

    Meta signs the raw bytes (lowercase hex); the hex is compared case-insensitively, in constant time.
    """
    if header is None or header[: len(_SIGNATURE_PREFIX)].lower() != _SIGNATURE_PREFIX:
        return Outcome.UNSIGNED
    expected = hmac.new(app_secret, body, hashlib.sha256).hexdigest().encode("ascii")
    given = header[len(_SIGNATURE_PREFIX) :].strip().lower().encode("utf-8", "surrogateescape")
    return None if hmac.compare_digest(expected, given) else Outcome.BAD_SIGNATURE


def parse_delivery(body: bytes) -> Delivery:
    """Decode and validate a whole delivery; raise `MalformedDelivery` naming the first problem."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedDelivery(f"body is not JSON: {exc.msg}") from exc
    if not isinstance(payload, dict):
        raise MalformedDelivery("body is not a JSON object")
    obj = payload.get("object", "")
    entries = payload.get("entry")
    if not isinstance(obj, str):
        raise MalformedDelivery("'object' is not a string")
    if not isinstance(entries, list):
        raise MalformedDelivery("'entry' is missing or not a list")
    changes: list[StoryInsights | OtherChange] = []
    for i, entry in enumerate(entries):
        changes.extend(_parse_entry(entry, f"entry[{i}]"))
    return Delivery(obj, changes)


def _parse_entry(entry: object, where: str) -> Iterable[StoryInsights | OtherChange]:
    if not isinstance(entry, dict):
        raise MalformedDelivery(f"{where} is not an object")
    ig_user_id = _graph_id(entry.get("id"), f"{where}.id")
    event_time = _event_time(entry.get("time"), f"{where}.time")
    # Entries of other Instagram webhook families carry `messaging` instead of `changes`.
    raw_changes = entry.get("changes", [])
    if not isinstance(raw_changes, list):
        raise MalformedDelivery(f"{where}.changes is not a list")
    for j, change in enumerate(raw_changes):
        cwhere = f"{where}.changes[{j}]"
        if not isinstance(change, dict) or not isinstance(change.get("field"), str):
            raise MalformedDelivery(f"{cwhere} is not an object with a string 'field'")
        if change["field"] != FIELD:
            yield OtherChange(ig_user_id, change["field"][:64])
            continue
        yield _parse_story_insights(ig_user_id, event_time, change.get("value"), f"{cwhere}.value")


def _parse_story_insights(ig_user_id: int, event_time: datetime | None, value: object,
                          where: str) -> StoryInsights:
    if not isinstance(value, dict):
        raise MalformedDelivery(f"{where} is not an object")
    media_id = _graph_id(value.get("media_id"), f"{where}.media_id")
    values: dict[str, models.Number] = {}
    for key, raw in value.items():
        # A JSON number, or a numeric string (Meta documents numbers; a quoted one is read as Graph answers
        # are, rather than a whole delivery refused and lost after Meta's retries); `true` is no value.
        v = None if key == "media_id" else parsing.number(raw)
        if v is None:
            continue
        if not _METRIC_NAME.fullmatch(key):
            raise MalformedDelivery(f"{where} has a numeric key that is not a metric name")
        values[key] = v
    if not values:
        raise MalformedDelivery(f"{where} has no numeric metric")
    return StoryInsights(ig_user_id, media_id, values, event_time)


def _graph_id(raw: object, where: str) -> int:
    """A Graph id, sent as a digit string (or, leniently, an integer), within bigint."""
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(text, str) or not _GRAPH_ID.fullmatch(text) or int(text) > _BIGINT_MAX:
        raise MalformedDelivery(f"{where} is not a Graph id")
    return int(text)


def _event_time(raw: object, where: str) -> datetime | None:
    """entry.time has been seen in seconds and in milliseconds; absent is tolerated."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise MalformedDelivery(f"{where} is not a timestamp")
    seconds = raw / 1000 if raw >= _MS_THRESHOLD else raw
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MalformedDelivery(f"{where} is not a timestamp") from exc


def rows_for(change: StoryInsights, now: datetime) -> Rows:
    """The writer rows of one story's final numbers, received at `now`."""
    media = models.MediaRow(
        media_id=change.media_id, ig_user_id=change.ig_user_id, media_type=None,
        media_product_type="STORY", posted_at=None, permalink=None, like_count=None,
        comments_count=None, seen_at=now, insights_refreshed_at=now)
    insights: list[models.MediaInsightRow] = []
    unavailable: list[models.UnavailableRow] = []
    for metric, value in sorted(change.values.items()):
        if value >= 0:
            insights.append(models.MediaInsightRow(change.media_id, metric, "", "", value, now))
            continue
        reason = (models.UnavailableReason.NOT_ENOUGH_VIEWERS if value == _NOT_ENOUGH_VIEWERS
                  else models.UnavailableReason.NO_DATA)
        unavailable.append(models.UnavailableRow(
            "media", change.media_id, metric, "", reason.value, f"story_insights webhook value {value}", now))
    return Rows([media], insights, unavailable)


class _RecentChanges:
    """Bounded memory of changes already enqueued, so Meta's repeats skip the writer.

    The database upserts are what make duplicates harmless; this only saves work and tells `stored`
    from `duplicate` in the metrics. A key is reserved before enqueueing and released if that fails, so
    two identical concurrent deliveries enqueue once. Each key holds a future of the writer mark its rows
    were enqueued up to (None when enqueueing failed), so a duplicate is answered only once the original's
    rows are committed.
    """

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._keys: collections.OrderedDict[tuple[object, ...], asyncio.Future[int | None]] = \
            collections.OrderedDict()

    @staticmethod
    def key(change: StoryInsights) -> tuple[object, ...]:
        return (change.ig_user_id, change.media_id, tuple(sorted(change.values.items())))

    def reserve(self, key: tuple[object, ...]) -> tuple[bool, asyncio.Future[int | None]]:
        """(True, a new future to resolve with the mark) when `key` is new; (False, the original's future)
        when it was seen recently."""
        known = self._keys.get(key)
        if known is not None:
            self._keys.move_to_end(key)
            return False, known
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._keys[key] = future
        while len(self._keys) > self._max_entries:
            self._keys.popitem(last=False)
        return True, future

    def release(self, key: tuple[object, ...]) -> None:
        self._keys.pop(key, None)


class WebhookReceiver:
    """GET (handshake) and POST (deliveries) on `settings.path`, mountable on any aiohttp app."""

    def __init__(self, settings: settings.WebhookSettings, *,
                 accounts: Callable[[], Mapping[str, models.Account]],
                 writer: storage_writer.Writer, metrics: metrics.Metrics,
                 enqueue_timeout_s: float = 2.0, commit_timeout_s: float = 10.0,
                 read_timeout_s: float = 10.0,
                 recent_max_entries: int = 50_000,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._settings = settings
        self._accounts = accounts  # called per delivery: SIGHUP may change the account list
        self._writer = writer
        self._metrics = metrics
        self._enqueue_timeout_s = enqueue_timeout_s
        self._commit_timeout_s = commit_timeout_s
        self._read_timeout_s = read_timeout_s
        self._recent = _RecentChanges(recent_max_entries)
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self._settings.path, self.handle_verify, allow_head=False),
                web.post(self._settings.path, self.handle_delivery)]

    def _count(self, outcome: str, n: int = 1) -> None:
        self._metrics.webhook_deliveries.labels(outcome=outcome).inc(n)

    # -- handshake ------------------------------------------------------------------------------------

    async def handle_verify(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        token = query.get("hub.verify_token", "").encode("utf-8", "surrogateescape")
        expected = self._settings.verify_token.reveal().encode("utf-8")
        # Evaluate the compare whatever the mode, so timing says nothing about the token.
        token_ok = hmac.compare_digest(token, expected)
        challenge = query.get("hub.challenge", "")
        if query.get("hub.mode") != "subscribe" or not token_ok:
            self._count(Outcome.VERIFY_FAILED)
            log.warning("webhook_verify_failed", mode=query.get("hub.mode", "")[:32])
            return web.Response(status=403, text="forbidden")
        if not challenge or len(challenge) > _CHALLENGE_MAX_CHARS:
            self._count(Outcome.VERIFY_FAILED)
            log.warning("webhook_verify_failed", reason="bad_challenge")
            return web.Response(status=400, text="bad hub.challenge")
        self._count(Outcome.VERIFY_OK)
        log.info("webhook_verified")
        return web.Response(status=200, text=challenge, content_type="text/plain")

    # -- deliveries -----------------------------------------------------------------------------------

    async def handle_delivery(self, request: web.Request) -> web.Response:
        limit = self._settings.body_max_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._reject(Outcome.TOO_LARGE, 413, content_length=request.content_length)
        signature = request.headers.get(SIGNATURE_HEADER)
        if signature is None:
            # No need to read a body nobody vouched for.
            return self._reject(Outcome.UNSIGNED, 401)
        try:
            async with asyncio.timeout(self._read_timeout_s):
                body = await _read_capped(request, limit)
        except TimeoutError:
            return self._reject(Outcome.READ_TIMEOUT, 408)
        if body is None:
            return self._reject(Outcome.TOO_LARGE, 413)
        secret = self._settings.app_secret.reveal().encode("utf-8")
        failure = verify_signature(secret, body, signature)
        if failure is not None:
            return self._reject(failure, 401 if failure == Outcome.UNSIGNED else 403, body_bytes=len(body))
        try:
            delivery = parse_delivery(body)
        except MalformedDelivery as exc:
            return self._reject(Outcome.MALFORMED, 400, reason=str(exc), body_bytes=len(body))
        return await self._accept(delivery)

    def _reject(self, outcome: str, status: int, **context: Any) -> web.Response:
        self._count(outcome)
        log.warning("webhook_rejected", outcome=outcome, status=status, **context)
        response = web.Response(status=status, text=outcome)
        if status in (408, 413):
            # The rest of the body is unread: do not reuse the connection.
            response.force_close()
        return response

    async def _accept(self, delivery: Delivery) -> web.Response:
        if delivery.object != "instagram":
            self._count(Outcome.IGNORED_OBJECT, max(1, len(delivery.changes)))
            log.debug("webhook_ignored_object", object=delivery.object[:32])
            return web.Response(text="ok")
        if not delivery.changes:
            self._count(Outcome.EMPTY)
            return web.Response(text="ok")
        accounts = self._accounts()
        now = self._clock()
        rows = Rows([], [], [])
        reserved: list[tuple[tuple[object, ...], asyncio.Future[int | None]]] = []
        originals: list[asyncio.Future[int | None]] = []  # of the duplicates: their rows were enqueued
        outcomes: list[tuple[str, StoryInsights | OtherChange]] = []
        for change in delivery.changes:
            outcome = self._classify(change, accounts)
            if outcome == Outcome.STORED:
                assert isinstance(change, StoryInsights)
                key = self._recent.key(change)
                new, future = self._recent.reserve(key)
                if new:
                    reserved.append((key, future))
                    part = rows_for(change, now)
                    rows.media.extend(part.media)
                    rows.insights.extend(part.insights)
                    rows.unavailable.extend(part.unavailable)
                else:
                    outcome = Outcome.DUPLICATE
                    originals.append(future)
            outcomes.append((outcome, change))
        try:
            mark = await self._enqueue(rows)
        except (TimeoutError, exceptions.CollectorError) as exc:
            for key, future in reserved:
                self._recent.release(key)
                future.set_result(None)
            return self._busy("enqueue", exc, self._enqueue_timeout_s)
        for _, future in reserved:
            future.set_result(mark)
        try:
            async with asyncio.timeout(self._commit_timeout_s):
                for original in originals:  # a duplicate's rows are the original's: wait for those
                    enqueued = await asyncio.shield(original)
                    if enqueued is None:
                        raise exceptions.StorageError("the original delivery could not be enqueued")
                    mark = max(mark, enqueued)
                await self._writer.wait_committed(mark)
        except (TimeoutError, exceptions.CollectorError) as exc:
            # Not known to be committed: Meta retries (idempotent); the rows stay in the writer.
            for key, _ in reserved:
                self._recent.release(key)
            return self._busy("commit", exc, self._commit_timeout_s)
        for outcome, change in outcomes:
            self._count(outcome)
            _log_change(outcome, change)
        return web.Response(text="ok")

    def _busy(self, stage: str, exc: BaseException, timeout_s: float) -> web.Response:
        self._count(Outcome.BUSY)
        log.warning("webhook_writer_unavailable", stage=stage, error=type(exc).__name__, timeout_s=timeout_s)
        return web.Response(status=503, text="busy", headers={"Retry-After": "60"})

    def _classify(self, change: StoryInsights | OtherChange,
                  accounts: Mapping[str, models.Account]) -> str:
        if isinstance(change, OtherChange):
            return Outcome.IGNORED_FIELD
        account = accounts.get(str(change.ig_user_id))
        if account is None:
            return Outcome.UNKNOWN_ACCOUNT
        if account.login == "instagram":
            # Meta documents story_insights for Facebook Login only; store what came anyway, but say so.
            log.warning("webhook_unexpected_login", ig_user_id=str(change.ig_user_id), login=account.login)
        return Outcome.STORED

    async def _enqueue(self, rows: Rows) -> int:
        """Hand the rows to the writer; its backpressure is bounded by `enqueue_timeout_s` (then 503).
        Returns the writer mark to wait for (0 when there was nothing to add)."""
        mark = 0
        async with asyncio.timeout(self._enqueue_timeout_s):
            # Tables in models.Table order, so the media row is never behind its insights.
            if rows.media:
                mark = await self._writer.add(models.Table.MEDIA, rows.media)
            if rows.insights:
                mark = await self._writer.add(models.Table.MEDIA_INSIGHT, rows.insights)
            if rows.unavailable:
                mark = await self._writer.add(models.Table.UNAVAILABLE, rows.unavailable)
        return mark


def _log_change(outcome: str, change: StoryInsights | OtherChange) -> None:
    if isinstance(change, OtherChange):
        log.debug("webhook_change", outcome=outcome, ig_user_id=str(change.ig_user_id), field=change.field)
        return
    event = log.info if outcome == Outcome.STORED else log.warning
    if outcome == Outcome.DUPLICATE:
        event = log.debug
    event("webhook_change", outcome=outcome, ig_user_id=str(change.ig_user_id),
          media_id=str(change.media_id), metrics=len(change.values),
          event_time=change.event_time.isoformat() if change.event_time else None)


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The raw body, or None as soon as it exceeds `limit` bytes (never holding more than that)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
