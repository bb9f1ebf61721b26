"""The simulator's request core: routing, authentication, budgets, faults and the non-insights endpoints.

`Simulator.call(method, path, params, base_url)` is synchronous and transport-free: it returns an
`Outcome` (status, JSON body, headers, and a transport action for injected faults). The aiohttp layer
(server.py) and batch requests both go through it, so one code path serves both hosts.

Routes (an optional `/vNN.N` prefix on every one; the token prefix tells the login: IGAA… instagram,
EAA… facebook):
  GET  /me, /{ig-user-id}?fields=…                    profile
  GET  /{media-id}?fields=…[,insights.metric(…)]     one media item or story
  GET  /{ig-user-id}/media, /{ig-user-id}/stories     cursor-paged listings
  GET  /{ig-user-id}/insights, /{media-id}/insights   see insights.py
  GET  /refresh_access_token?grant_type=ig_refresh_token   (instagram; token must be ≥ refresh_min_age_s)
  GET  /me/accounts, /debug_token, /oauth/access_token, /access_token, and every call with a Facebook user
       token (one token, many accounts): accounts_api.py, asked first
  POST /?batch=[…]                                     facebook tokens only, ≤ 50 operations

Objects of another account than the token's answer 100/33 (GraphMethodException), like ids that do not
exist. Expired stories answer the same on /insights.
"""

from __future__ import annotations

import base64
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from collector.simulator import accounts_api, faults, injected, insights, limits, rules, stats
from collector.simulator import world as world_mod

_VERSION = re.compile(r"^v\d+\.\d+$")
ACCOUNT_FIELDS = frozenset({
    "id", "user_id", "ig_id", "username", "name", "followers_count", "follows_count", "media_count",
    "biography", "profile_picture_url", "website", "account_type",
})
MEDIA_FIELDS = frozenset({
    "id", "media_type", "media_product_type", "timestamp", "permalink", "like_count", "comments_count",
    "caption", "shortcode", "username", "owner", "media_url", "thumbnail_url", "is_comment_enabled",
    "is_shared_to_feed", "insights",
})
BATCH_MAX = 50
JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}


@dataclass(frozen=True, slots=True)
class Options:
    default_version: str = "v24.0"  # echoed for unversioned paths
    latency_ms: float = 0.0
    latency_jitter: float = 0.5  # ± fraction of latency_ms
    account_budget: limits.Budget = field(default_factory=limits.Budget)
    app_budget: limits.Budget = field(default_factory=limits.Budget)
    account_budgets: Mapping[str, limits.Budget] = field(default_factory=dict)  # per ig user id, overrides
    # Per Facebook user (accounts_api), over every call made with its user tokens: code 17 past it.
    user_budget: limits.Budget = field(default_factory=limits.Budget)
    usage_reporting: limits.Reporting = field(default_factory=limits.Reporting)  # headers late / lagging
    throttle_status: int = 400  # HTTP status of 80002 / 17 / 4 answers (Meta: 400, sometimes 403/429)
    faults: faults.FaultRates = field(default_factory=faults.FaultRates)
    refresh_min_age_s: float = 86400.0  # §7.3: a token must be ≥ 24 h old to refresh; 0 relaxes it
    record_arrivals: bool = False  # keep every try per request identity in `stats.arrivals` (tests)
    record_agents: bool = False  # keep every call with its User-Agent in `stats.agent_calls` (tests)


@dataclass(slots=True)
class Outcome:
    status: int
    body: bytes
    headers: dict[str, str]
    action: str | None = None  # None, or a transport fault: "slow", "drop", "truncate", "http_5xx"


class _Request:
    """One Graph call being served."""

    __slots__ = ("base_url", "kind", "method", "params", "parts", "path", "token", "user", "version")

    def __init__(self, method: str, path: str, params: dict[str, str], base_url: str,
                 default_version: str) -> None:
        parts = [p for p in path.split("/") if p]
        self.version = default_version
        if parts and _VERSION.match(parts[0]):
            self.version = parts.pop(0)
        self.method, self.path, self.params, self.parts, self.base_url = method, path, params, parts, base_url
        self.kind = "unknown"
        self.token: world_mod.TokenInfo | None = None
        self.user: str | None = None  # the Facebook user id when the call came with a user token

    def url_for(self, overrides: dict[str, str], drop: tuple[str, ...] = ()) -> str:
        query = {k: v for k, v in self.params.items() if k not in drop}
        query.update(overrides)
        return f"{self.base_url}{self.path}?{urllib.parse.urlencode(query)}"


def _cursor(flag: str, position: int) -> str:
    return base64.urlsafe_b64encode(f"{flag}:{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        flag, position = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(":")
        if flag not in ("p", "q"):
            raise ValueError(flag)
        return flag, int(position)
    except ValueError:
        raise rules.ApiError(rules.invalid_parameter("Invalid cursor")) from None


def split_fields(fields: str) -> list[str]:
    """Split a `fields` value on commas outside parentheses and braces."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(fields):
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(fields[start:i].strip())
            start = i + 1
    out.append(fields[start:].strip())
    return [f for f in out if f]


class Simulator:
    def __init__(self, world: world_mod.World, options: Options | None = None) -> None:
        self.world = world
        self.options = options or Options()
        self.stats = stats.Stats()
        self._user_agent = ""
        self.limits = limits.Limits(
            self.options.account_budget, self.options.app_budget, self.options.account_budgets,
            self.options.usage_reporting,
            app_nominal_calls=limits.NOMINAL_APP_CALLS_PER_USER * max(1, world.account_total),
            user=self.options.user_budget)
        self.faults = faults.Faults(world.seed, self.options.faults)
        self.accounts = accounts_api.AccountsApi(world, self._authenticate)
        self.injected = injected.Injections()  # answers forced on chosen calls (tests of error scoping)
        self._trace = 0
        self._routes: dict[str, Callable[[_Request], dict[str, Any]]] = {
            "profile": self._profile, "media_object": self._media_object, "media": self._media_list,
            "stories": self._stories, "account_insights": self._account_insights,
            "media_insights": self._media_insights,
        }

    def reset(self) -> None:
        self.stats.reset()
        self.limits.reset()
        self.faults.reset()

    def _kind(self, parts: list[str]) -> str:
        if not parts:
            return "unknown"
        head = parts[0]
        if head in ("refresh_access_token", "access_token", "oauth", "debug_token"):
            return "token"
        is_account = head == "me" or self.world.account_index(head) is not None
        if len(parts) == 1:
            return "profile" if is_account else "media_object"
        edge = parts[1]
        if edge == "insights":
            return "account_insights" if is_account else "media_insights"
        return {"media": "media", "stories": "stories"}.get(edge, "unknown")

    # --- the one entry point ------------------------------------------------------------------------

    def call(self, method: str, path: str, params: dict[str, str], base_url: str,
             user_agent: str = "") -> Outcome:
        self._user_agent = user_agent  # of this request and, in a batch, of each operation
        req = _Request(method, path, params, base_url, self.options.default_version)
        if method == "POST" and not req.parts:
            return self.batch(params, base_url, req.version)
        self.stats.requests += 1
        out = self._call(req)
        # Answers forced on chosen calls (injected.py); never on a bad token or a transport fault.
        out.status, out.body = self.injected.answer(req.kind, req.parts, req.params, out.status, out.body,
                                                    rewritable=req.token is not None and out.action is None)
        return out

    def _call(self, req: _Request) -> Outcome:
        arrived = time.monotonic()
        now = self.world.clock()
        req.kind = self._kind(req.parts)
        st = self.stats
        st.calls += 1
        st.by_kind[req.kind] += 1
        headers = {"facebook-api-version": req.version, **JSON_HEADERS}
        action = None
        request_identity = faults.identity(req.method, "/".join(req.parts), req.params)
        code = None
        try:
            body = self.accounts.serve(req, now)  # accounts_api: user tokens, /me/accounts, debug, exchanges
            if body is not None:
                if req.user is not None:  # /me, /me/accounts with a user token: on its user's budget too
                    self._admit(None, req.user, now)
            elif req.kind == "token":
                body = self._token_endpoint(req, now)
            else:
                req.token = self._authenticate(req.params.get("access_token"), now)
                self._admit(req.token.account.ig_user_id, req.user, now)
                action = self.faults.next(request_identity)
                if action is not None:
                    st.faults[action] += 1
                    if action == "code1":
                        raise rules.ApiError(rules.server_unknown(), status=500)
                    if action == "code2":
                        raise rules.ApiError(rules.server_transient(), status=500)
                route = self._routes.get(req.kind)
                if route is None:
                    raise rules.ApiError(rules.object_not_found(req.parts[0] if req.parts else ""))
                body = route(req)
            status = 200
        except rules.ApiError as exc:
            self._trace += 1
            status = exc.status
            body = {"error": {**exc.error, "fbtrace_id": f"Sim{self._trace:08x}"}}
            code = exc.error["code"]
            st.by_code[code] += 1
        if self.options.record_arrivals:
            self._record(req, request_identity, arrived, action, code)
        if action == "http_5xx":
            status, body_bytes = 502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            headers["Content-Type"] = "text/html"
        else:
            body_bytes = orjson.dumps(body)
        st.by_status[status] += 1
        self._usage_headers(headers, req, now, arrived)
        transport_action = action if action in ("slow", "drop", "truncate") else None
        return Outcome(status, body_bytes, headers, transport_action)

    def _usage_headers(self, headers: dict[str, str], req: _Request, now: float, arrived: float) -> None:
        """The usage headers of one answer (absent while `Options.usage_reporting` holds them back)."""
        app_usage = self.limits.app_usage_header(now)
        if app_usage is not None:
            headers["X-App-Usage"] = orjson.dumps(app_usage).decode()
        if req.token is not None:
            ig_user_id = req.token.account.ig_user_id
            self._count_account(ig_user_id, arrived)
            buc = self.limits.buc_header(ig_user_id, now)
            if buc is not None:
                headers["X-Business-Use-Case-Usage"] = orjson.dumps(buc).decode()

    def _count_account(self, ig_user_id: str, arrived: float) -> None:
        """A call made with an account's token: per account and per User-Agent."""
        self.stats.by_account[ig_user_id] += 1
        self.stats.by_agent[self._user_agent] += 1
        if self.options.record_agents:
            self.stats.agent_calls.append(stats.AgentCall(arrived, self._user_agent, ig_user_id))

    def _record(self, req: _Request, request_identity: str, arrived: float, action: str | None,
                code: int | None) -> None:
        outcome = action or ("ok" if code is None else "throttled" if code in (4, 17, 80002) else "error")
        account = req.token.account.ig_user_id if req.token is not None else ""
        self.stats.arrivals.setdefault(request_identity, []).append(stats.Arrival(arrived, outcome, account))

    # --- auth and budgets ---------------------------------------------------------------------------

    def _authenticate(self, token: str | None, now: float) -> world_mod.TokenInfo:
        if not token:
            raise rules.ApiError(rules.token_missing())
        info = self.world.parse_token(token)
        if info is None:
            raise rules.ApiError(rules.token_unparsable())
        subcode = info.account.token_error
        expires = info.issued_at + world_mod.TOKEN_LIFETIME_S
        if subcode == 463 or (subcode is None and expires <= now):
            expired_at = expires if expires <= now else int(now) - 3600
            raise rules.ApiError(rules.token_expired(_meta_time(expired_at), _meta_time(now)))
        if subcode is not None:
            raise rules.ApiError(rules.token_invalid(subcode))
        return info

    def _admit(self, ig_user_id: str | None, user_id: str | None, now: float) -> None:
        """Count one call on the budgets of its scopes, in this order: the app (a call for an account), the
        Facebook user of a user token (code 17 past its budget), the account (80002). The first scope over
        its budget answers the call."""
        lim = self.limits
        if ig_user_id is not None:
            self._admit_scope("app", lim.app, lim.app_budget, rules.app_throttled, now)
        if user_id is not None:
            self._admit_scope("user", lim.user_scope(user_id), lim.user_budget, rules.user_throttled, now)
        if ig_user_id is not None:
            self._admit_scope("account", lim.account_scope(ig_user_id), lim.budget_of(ig_user_id),
                              rules.account_throttled, now)

    def _admit_scope(self, name: str, scope: limits.Scope, budget: limits.Budget,
                     error: Callable[[], rules.Error], now: float) -> None:
        was_blocked = scope.blocked_until > now
        if self.limits.admit(scope, budget, now) > 0:
            self.stats.throttled[name] += 1
            if was_blocked:
                self.stats.while_blocked[name] += 1
            raise rules.ApiError(error(), status=self.options.throttle_status)

    # --- objects ------------------------------------------------------------------------------------

    def _owned_account(self, req: _Request) -> world_mod.SimAccount:
        assert req.token is not None
        target = req.parts[0]
        if target not in ("me", req.token.account.ig_user_id):
            raise rules.ApiError(rules.object_not_found(target))
        return req.token.account

    def _owned_media(self, req: _Request) -> world_mod.SimMedia:
        assert req.token is not None
        try:
            media = self.world.media(req.parts[0])
        except KeyError:
            raise rules.ApiError(rules.object_not_found(req.parts[0])) from None
        if media.ig_user_id != req.token.account.ig_user_id:
            raise rules.ApiError(rules.object_not_found(req.parts[0]))
        return media

    def _profile(self, req: _Request) -> dict[str, Any]:
        account = self._owned_account(req)
        out: dict[str, Any] = {}
        for name in split_fields(req.params.get("fields", "id")):
            if name not in ACCOUNT_FIELDS:
                raise rules.ApiError(rules.nonexisting_field(name, "IGUser"))
            out[name] = _account_field(account, name)
        out.setdefault("id", account.ig_user_id)
        return out

    def _media_fields(self, req: _Request, media: world_mod.SimMedia, fields: list[str]) -> dict[str, Any]:
        assert req.token is not None
        w = self.world
        out: dict[str, Any] = {}
        for spec in fields:
            name = re.split(r"[.({]", spec, maxsplit=1)[0]
            if name not in MEDIA_FIELDS:
                raise rules.ApiError(rules.nonexisting_field(name, "IGMedia"))
            if name == "insights":
                # §4 field expansion: one failing item fails the whole response.
                metric = re.search(r"\.metric\(([^)]*)\)", spec)
                breakdown = re.search(r"\.breakdown\(([^)]*)\)", spec)
                params = {"metric": metric.group(1) if metric else ""}
                if breakdown:
                    params["breakdown"] = breakdown.group(1)
                out["insights"] = insights.media_insights(w, req.token.login, media, params, w.clock())
            elif name == "id":
                out["id"] = media.media_id
            elif name == "media_type":
                out["media_type"] = media.media_type
            elif name == "media_product_type":
                if req.token.login == "instagram" and w.knobs.refuse_media_product_type_on_instagram:
                    raise rules.ApiError(rules.nonexisting_field(name, "IGMedia"))
                if not (req.token.login == "instagram" and w.knobs.omit_media_product_type_on_instagram):
                    out["media_product_type"] = media.media_product_type
            elif name == "timestamp":
                out["timestamp"] = media.timestamp_text
            elif name == "permalink":
                out["permalink"] = media.permalink
            elif name == "like_count":
                likes = None if media.is_story else w.like_count(media)
                if likes is not None:
                    out["like_count"] = likes
            elif name == "comments_count":
                if not media.is_story:
                    out["comments_count"] = w.comments_count(media)
            elif name == "username":
                out["username"] = w.account(media.ig_user_id).username
            elif name == "owner":
                out["owner"] = {"id": media.ig_user_id}
            elif name == "shortcode":
                out["shortcode"] = media.permalink.rstrip("/").rsplit("/", 1)[-1]
            elif name == "caption":
                out["caption"] = f"Simulated post {media.media_id}"
            elif name in ("media_url", "thumbnail_url"):
                if name == "media_url" or media.media_type == "VIDEO":
                    out[name] = f"https://scontent.example/{media.media_id}/{name}.jpg"
            elif name == "is_comment_enabled" or (
                    name == "is_shared_to_feed" and media.media_product_type == "REELS"):
                out[name] = True
        return out

    def _media_object(self, req: _Request) -> dict[str, Any]:
        media = self._owned_media(req)
        fields = split_fields(req.params.get("fields", "id"))
        return self._media_fields(req, media, fields)

    def _listing(self, req: _Request, items: list[world_mod.SimMedia], empty_page: bool) -> dict[str, Any]:
        params = req.params
        try:
            limit = min(100, max(1, int(params.get("limit", "25"))))
        except ValueError:
            raise rules.ApiError(rules.invalid_parameter("Param limit must be an integer")) from None
        since, until = params.get("since"), params.get("until")
        if since or until:
            lo = float(since) if since else float("-inf")
            hi = float(until) if until else float("inf")
            items = [m for m in items if lo <= m.timestamp.timestamp() <= hi]
        fields = split_fields(params.get("fields", "id"))
        flag = "p"
        if params.get("after"):
            flag, position = _decode_cursor(params["after"])
            if empty_page and flag == "p":
                # The injected case (§4): an empty page whose paging still has `next`.
                cursor = _cursor("q", position)
                return {"data": [], "paging": {"cursors": {"before": cursor, "after": cursor},
                                               "next": req.url_for({"after": cursor}, drop=("before",))}}
            start = position + 1
        elif params.get("before"):
            flag, position = _decode_cursor(params["before"])
            start = max(0, position - limit)
            items = items[:position]
        else:
            start = 0
        page = items[start:start + limit]
        data = [self._media_fields(req, m, fields) for m in page]
        if not page:
            return {"data": data}
        before, after = _cursor(flag, start), _cursor(flag, start + len(page) - 1)
        paging: dict[str, Any] = {"cursors": {"before": before, "after": after}}
        if start + len(page) < len(items):
            paging["next"] = req.url_for({"after": after}, drop=("before",))
        if start > 0:
            paging["previous"] = req.url_for({"before": before}, drop=("after",))
        return {"data": data, "paging": paging}

    def _media_list(self, req: _Request) -> dict[str, Any]:
        account = self._owned_account(req)
        return self._listing(req, self.world.media_of(account.ig_user_id), account.empty_page)

    def _stories(self, req: _Request) -> dict[str, Any]:
        account = self._owned_account(req)
        return self._listing(req, self.world.stories_of(account.ig_user_id), False)

    def _account_insights(self, req: _Request) -> dict[str, Any]:
        account = self._owned_account(req)
        return insights.account_insights(self.world, account, req.params, self.world.clock(), req.url_for)

    def _media_insights(self, req: _Request) -> dict[str, Any]:
        assert req.token is not None
        media = self._owned_media(req)
        return insights.media_insights(self.world, req.token.login, media, req.params, self.world.clock())

    # --- tokens (§7.3) ------------------------------------------------------------------------------

    def _token_endpoint(self, req: _Request, now: float) -> dict[str, Any]:
        params, head = req.params, req.parts[0]
        if head == "refresh_access_token" and len(req.parts) == 1:
            grant = "ig_refresh_token"
            if params.get("grant_type") != grant:
                raise rules.ApiError(rules.invalid_parameter("Unsupported grant_type"))
            info = self._authenticate(params.get("access_token"), now)
            if info.login != "instagram":
                raise rules.ApiError(rules.token_unparsable())
            if now - info.issued_at < self.options.refresh_min_age_s:
                # [INF] wording invented: §7.3 only says the token must be at least 24 h old.
                raise rules.ApiError(rules.invalid_parameter(
                    "The access token must be at least 24 hours old to be refreshed"))
            return self.accounts.new_world_token(info, now, world_mod.TOKEN_LIFETIME_S)
        raise rules.ApiError(rules.object_not_found("/".join(req.parts)))

    # --- batch (§5) ---------------------------------------------------------------------------------

    def batch(self, params: dict[str, str], base_url: str, default_version: str | None = None) -> Outcome:
        """POST / with `batch=[…]`: each operation is a Graph call of its own (counted, limited,
        faulted); a dropped operation is `null` in the answer."""
        self.stats.requests += 1
        req = _Request("POST", "/", params, base_url, default_version or self.options.default_version)
        now = self.world.clock()
        self.stats.by_kind["batch"] += 1
        try:
            info = self._authenticate(params.get("access_token"), now)
            if info.login != "facebook":
                # [INF] §5: batch is treated as graph.facebook.com only.
                raise rules.ApiError(rules.error(
                    "(#3) Application does not have the capability to make this API call.", 3))
            try:
                ops = orjson.loads(params.get("batch", ""))
            except orjson.JSONDecodeError:
                raise rules.ApiError(rules.invalid_parameter("The parameter batch must be JSON")) from None
            if not isinstance(ops, list) or not ops:
                raise rules.ApiError(rules.invalid_parameter("The parameter batch must be a JSON array"))
            if len(ops) > BATCH_MAX:
                raise rules.ApiError(rules.invalid_parameter(
                    f"Too many requests in batch message. Maximum batch size is {BATCH_MAX}"))
        except rules.ApiError as exc:
            self._trace += 1
            self.stats.by_code[exc.error["code"]] += 1
            self.stats.by_status[exc.status] += 1
            body = {"error": {**exc.error, "fbtrace_id": f"Sim{self._trace:08x}"}}
            headers = {"facebook-api-version": req.version, **JSON_HEADERS}
            return Outcome(exc.status, orjson.dumps(body), headers)
        include_headers = params.get("include_headers", "true") != "false"
        answers: list[dict[str, Any] | None] = []
        for op in ops:
            relative = str(op.get("relative_url", "")) if isinstance(op, dict) else ""
            path, _, query = relative.partition("?")
            op_params = dict(urllib.parse.parse_qsl(query))
            op_params.setdefault("access_token", params["access_token"])
            method = str(op.get("method", "GET")).upper() if isinstance(op, dict) else "GET"
            out = self._call(_Request(method, "/" + path.lstrip("/"), op_params, base_url, req.version))
            if out.action == "drop":
                answers.append(None)
                continue
            answer: dict[str, Any] = {"code": out.status, "body": out.body.decode()}
            if include_headers:
                answer["headers"] = [{"name": k, "value": v} for k, v in out.headers.items()]
            answers.append(answer)
        self.stats.by_status[200] += 1
        return Outcome(200, orjson.dumps(answers), {"facebook-api-version": req.version, **JSON_HEADERS})


def _account_field(account: world_mod.SimAccount, name: str) -> Any:
    return {
        "id": account.ig_user_id, "user_id": account.ig_user_id, "ig_id": 1_000_000 + account.index,
        "username": account.username, "name": f"Sim Account {account.index}",
        "followers_count": account.followers_count, "follows_count": 100 + account.index % 400,
        "media_count": account.media_count, "biography": "A simulated professional account.",
        "profile_picture_url": f"https://scontent.example/{account.ig_user_id}/profile.jpg",
        "website": f"https://example.com/{account.username}", "account_type": "BUSINESS",
    }[name]


def _meta_time(ts: float) -> str:
    """Meta's token-expiry wording: `Tuesday, 01-Dec-25 06:00:00 PST`."""
    local = datetime.fromtimestamp(ts, UTC).astimezone(world_mod.LA)
    return local.strftime("%A, %d-%b-%y %H:%M:%S %Z")

