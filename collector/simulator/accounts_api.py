"""The simulator's account-discovery and token-lifecycle endpoints: Facebook users with Pages, their user
tokens, `/me/accounts`, `/me`, `debug_token` and both token exchanges (reference graph-api.md §1.1, §7.3).

Hooked into `api.Simulator` at one point: `Simulator._call` asks `AccountsApi.serve(req, now)` first.
`serve` answers the requests that are its own (a dict), raises `rules.ApiError`, or returns None to let
api.py serve the request; a collection call made with a Facebook *user* token (one token, many accounts)
is authorised here and handed on with the account's own world token, so every insights rule and budget
of api.py applies to it unchanged. Every call made with a user token (these too) also counts on its
user's budget (`api.Options.user_budget`, `--user-calls`): past it, the user's calls answer code 17
`(#17) User request limit reached`, whichever account they are for.

    sim.simulator.accounts.add_user(ig_user_ids, pages_without_account=3, scopes=...) -> FacebookUser
    sim.simulator.accounts.user_token(user, short_lived=False, expires_in_s=None) -> str
    sim.simulator.accounts.instagram_token(ig_user_id) -> str          # a short-lived Instagram Login token
    sim.simulator.accounts.set_linked(page_id, linked)                  # unlink / relink a Page
    sim.simulator.accounts.app_id, .app_secret                          # the Meta app of the world

Control endpoints (never counted), for tests and demos that drive a simulator in another process:
    POST /__sim/users?ig_user_ids=1,2&pages_without_account=N[&scopes=a,b][&short_lived=1]
                                            a Facebook user with those Pages -> {user_id, access_token, pages}
    POST /__sim/pages/{page_id}/unlink      the Page's Instagram account is no longer linked
    POST /__sim/pages/{page_id}/link        linked again

Which answers are documented and which invented: the `/me/accounts` page shape (`data` of Pages, each
`{"id", "instagram_business_account": {"id", "username"}}` when one is linked, cursor paging), the
`debug_token` data fields and the exchange answers follow §7.3 [DOC]. The error wording for a wrong
client secret or app token is [INF] (code 101 and 190): Meta's exact bodies are not in the reference.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from collector.simulator import rules
from collector.simulator import world as world_mod

if TYPE_CHECKING:
    from collector.simulator import api

APP_ID = "1000000000000001"
FACEBOOK_SCOPES = ("instagram_basic", "instagram_manage_insights", "pages_read_engagement", "pages_show_list")
INSTAGRAM_SCOPES = ("instagram_business_basic", "instagram_business_manage_insights")
LONG_LIVED_S = 5183944  # §7.3: what fb_exchange_token answers (~60 days)
SHORT_LIVED_S = 3600
PAGE_ID_BASE = 100_000_000_000_000
USER_ID_BASE = 10_150_000_000_000
_PAGE_LIMIT_MAX = 100
_INSIGHTS_KINDS = ("account_insights", "media_insights")


@dataclass(slots=True)
class Page:
    page_id: str
    name: str
    ig_user_id: str | None  # the linked Instagram professional account, None for a Page without one
    linked: bool = True  # False: unlinked (the control endpoint); /me/accounts lists the Page without it


@dataclass(slots=True)
class FacebookUser:
    index: int
    user_id: str
    name: str
    pages: list[Page]
    scopes: tuple[str, ...]
    token_error: int | None = None  # 190 subcode every call with this user's tokens gets

    def reachable(self) -> set[str]:
        return {p.ig_user_id for p in self.pages if p.linked and p.ig_user_id is not None}


@dataclass(frozen=True, slots=True)
class Grant:
    user: FacebookUser
    issued_at: int
    expires_at: int  # Unix seconds; 0: never


@dataclass(slots=True)
class AccountsApi:
    world: world_mod.World
    # api.Simulator._authenticate: a world token's account, or the ApiError Meta would answer
    authenticate: Callable[[str | None, float], world_mod.TokenInfo]
    app_id: str = APP_ID
    app_secret: str = ""
    users: list[FacebookUser] = field(default_factory=list)
    _grants: dict[str, Grant] = field(default_factory=dict)
    _pages: dict[str, Page] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.app_secret:
            seed = f"app-secret-{self.world.seed}".encode()
            self.app_secret = hashlib.blake2b(seed, digest_size=16).hexdigest()

    # --- the world's Facebook users ---------------------------------------------------------------

    def add_user(self, ig_user_ids: Iterable[str], *, pages_without_account: int = 0,
                 scopes: Sequence[str] = FACEBOOK_SCOPES, token_error: int | None = None) -> FacebookUser:
        """A Facebook user with one Page per account in `ig_user_ids` (Facebook Login accounts of the world)
        plus `pages_without_account` Pages with no Instagram account, spread evenly between them."""
        index = len(self.users)
        ids = list(ig_user_ids)
        for ig_user_id in ids:
            if self.world.account(ig_user_id).login != "facebook":
                raise ValueError(f"{ig_user_id} is an Instagram Login account of the world")
        slots: list[str | None] = list(ids)
        for n in range(pages_without_account):
            slots.insert((n * 7 + 3) % (len(slots) + 1), None)
        pages = []
        for seq, linked_id in enumerate(slots):
            page = Page(str(PAGE_ID_BASE + index * 10_000 + seq), f"Sim Page {index}.{seq}", linked_id)
            self._pages[page.page_id] = page
            pages.append(page)
        user = FacebookUser(index, str(USER_ID_BASE + index), f"Sim User {index}", pages, tuple(scopes),
                            token_error)
        self.users.append(user)
        return user

    def user_token(self, user: FacebookUser, *, short_lived: bool = False,
                   expires_in_s: int | None = None) -> str:
        """A user access token of `user`: long-lived (~60 days) unless `short_lived` (1 h);
        `expires_in_s` overrides the lifetime (0: never expires)."""
        now = int(self.world.clock())
        lifetime = SHORT_LIVED_S if short_lived else LONG_LIVED_S
        if expires_in_s is not None:
            lifetime = expires_in_s
        return self._grant(user, now, now + lifetime if lifetime else 0)

    def instagram_token(self, ig_user_id: str) -> str:
        """A fresh (short-lived, as Instagram Login hands it over) token of an Instagram Login account."""
        account = self.world.account(ig_user_id)
        if account.login != "instagram":
            raise ValueError(f"{ig_user_id} is a Facebook Login account of the world")
        return self.world.make_token(account.index, "instagram", int(self.world.clock()))

    def set_linked(self, page_id: str, linked: bool) -> None:
        self._pages[page_id].linked = linked

    def has_page(self, page_id: str) -> bool:
        return page_id in self._pages

    def page_of(self, ig_user_id: str) -> Page:
        return next(p for p in self._pages.values() if p.ig_user_id == ig_user_id)

    def _grant(self, user: FacebookUser, issued_at: int, expires_at: int) -> str:
        sequence = len(self._grants)
        mac = hashlib.blake2b(f"{self.world.seed}\x1f{user.index}\x1f{issued_at}\x1f{sequence}".encode(),
                              digest_size=12).hexdigest()
        token = f"EAAU{user.index:04d}{issued_at:010d}{mac}"
        self._grants[token] = Grant(user, issued_at, expires_at)
        return token

    # --- the hook -----------------------------------------------------------------------------------

    def serve(self, req: api._Request, now: float) -> dict[str, Any] | None:
        """The answer when the request is one of ours; None to let api.py serve it (possibly with a
        user token replaced by the account's own token, once this user is known to reach the account)."""
        parts, params = req.parts, req.params
        head = parts[0] if parts else ""
        if head == "debug_token" and len(parts) == 1:
            return self._debug_token(params, now)
        if head == "oauth" and parts[1:] == ["access_token"]:
            return self._fb_exchange(params, now)
        if head == "access_token" and len(parts) == 1:
            return self._ig_exchange(params, now)
        grant = self._grants.get(params.get("access_token", ""))
        if grant is None:
            return None  # a world token (or garbage): api.py knows what to do with it
        user = self._check(grant, now)
        req.user = user.user_id  # api.py counts the call on this user's budget too (code 17 past it)
        if parts == ["me"]:
            return {"id": user.user_id, "name": user.name}
        if parts == ["me", "accounts"]:
            return self._me_accounts(req, user)
        owner = self._owner(head)
        if owner is None or owner not in user.reachable():
            raise rules.ApiError(rules.object_not_found(head))
        if req.kind in _INSIGHTS_KINDS and "instagram_manage_insights" not in user.scopes:
            raise rules.ApiError(rules.error("(#10) Application does not have permission for this action",
                                             10))
        params["access_token"] = self.world.account(owner).access_token
        return None

    def _check(self, grant: Grant, now: float) -> FacebookUser:
        if grant.user.token_error is not None:
            raise rules.ApiError(rules.token_invalid(grant.user.token_error))
        if grant.expires_at and grant.expires_at <= now:
            raise rules.ApiError(rules.token_expired(_meta_time(grant.expires_at), _meta_time(now)))
        return grant.user

    def _owner(self, object_id: str) -> str | None:
        if self.world.account_index(object_id) is not None:
            return object_id
        try:
            return self.world.media(object_id).ig_user_id
        except KeyError:
            return None

    # --- /me/accounts -------------------------------------------------------------------------------

    def _me_accounts(self, req: api._Request, user: FacebookUser) -> dict[str, Any]:
        params = req.params
        try:
            limit = min(_PAGE_LIMIT_MAX, max(1, int(params.get("limit", "25"))))
        except ValueError:
            raise rules.ApiError(rules.invalid_parameter("Param limit must be an integer")) from None
        start = _decode_cursor(params["after"]) + 1 if params.get("after") else 0
        fields = _top_level_fields(params.get("fields", "id"))
        wants_ig = "instagram_business_account" in fields
        data: list[dict[str, Any]] = []
        page_slice = user.pages[start:start + limit]
        for page in page_slice:
            item: dict[str, Any] = {"id": page.page_id}
            if "name" in fields:
                item["name"] = page.name
            if wants_ig and page.linked and page.ig_user_id is not None:
                account = self.world.account(page.ig_user_id)
                item["instagram_business_account"] = {"id": account.ig_user_id, "username": account.username}
            data.append(item)
        if not page_slice:
            return {"data": []}
        before, after = _cursor(start), _cursor(start + len(page_slice) - 1)
        paging: dict[str, Any] = {"cursors": {"before": before, "after": after}}
        if start + len(page_slice) < len(user.pages):
            paging["next"] = req.url_for({"after": after}, drop=("before",))
        return {"data": data, "paging": paging}

    # --- tokens (§7.3) ------------------------------------------------------------------------------

    def _debug_token(self, params: dict[str, str], now: float) -> dict[str, Any]:
        app_token = params.get("access_token", "")
        if not app_token:
            raise rules.ApiError(rules.token_missing())
        if app_token != f"{self.app_id}|{self.app_secret}":
            raise rules.ApiError(rules.error("Invalid OAuth access token signature.", 190))  # [INF] wording
        input_token = params.get("input_token", "")
        grant = self._grants.get(input_token)
        if grant is not None:
            return {"data": self._debug_user(grant, now)}
        info = self.world.parse_token(input_token)
        if info is None:
            return {"data": {"is_valid": False,
                             "error": {"code": 190, "message": "Invalid OAuth access token."}}}
        return {"data": self._debug_world(info, input_token, now)}

    def _debug_user(self, grant: Grant, now: float) -> dict[str, Any]:
        error: dict[str, Any] | None = None
        try:
            self._check(grant, now)
        except rules.ApiError as exc:
            error = {"code": exc.error["code"], "message": exc.error["message"],
                     "subcode": exc.error.get("error_subcode")}
        out: dict[str, Any] = {
            "app_id": self.app_id, "type": "USER", "application": "ig-collector-sim",
            "data_access_expires_at": (grant.expires_at or int(now)) + 30 * 86400,
            "expires_at": grant.expires_at, "is_valid": error is None, "issued_at": grant.issued_at,
            "scopes": list(grant.user.scopes), "user_id": grant.user.user_id,
        }
        if error is not None:
            out["error"] = error
        return out

    def _debug_world(self, info: world_mod.TokenInfo, token: str, now: float) -> dict[str, Any]:
        error: dict[str, Any] | None = None
        try:
            self.authenticate(token, now)
        except rules.ApiError as exc:
            error = exc.error
        expires = info.issued_at + world_mod.TOKEN_LIFETIME_S
        scopes = INSTAGRAM_SCOPES if info.login == "instagram" else FACEBOOK_SCOPES
        out: dict[str, Any] = {
            "app_id": self.app_id, "type": "USER", "application": "ig-collector-sim",
            "data_access_expires_at": expires + 30 * 86400, "expires_at": expires, "is_valid": error is None,
            "issued_at": info.issued_at, "scopes": list(scopes), "user_id": info.account.ig_user_id,
        }
        if error is not None:
            out["error"] = {"code": error["code"], "message": error["message"],
                            "subcode": error.get("error_subcode")}
        return out

    def _check_client(self, params: dict[str, str], *, with_id: bool) -> None:
        names = ("client_id", "client_secret") if with_id else ("client_secret",)
        for name in names:
            if not params.get(name):
                raise rules.ApiError(rules.invalid_parameter(f"Missing {name} parameter."))
        if with_id and params["client_id"] != self.app_id:
            raise rules.ApiError(rules.error("Error validating application. Invalid application ID.", 101))
        if params["client_secret"] != self.app_secret:
            raise rules.ApiError(rules.error("Error validating client secret.", 101))  # [INF] code

    def _fb_exchange(self, params: dict[str, str], now: float) -> dict[str, Any]:
        if params.get("grant_type") != "fb_exchange_token":
            raise rules.ApiError(rules.invalid_parameter("Unsupported grant_type"))
        self._check_client(params, with_id=True)
        short = params.get("fb_exchange_token")
        grant = self._grants.get(short or "")
        if grant is not None:
            user = self._check(grant, now)
            issued = int(now)
            return {"access_token": self._grant(user, issued, issued + LONG_LIVED_S), "token_type": "bearer",
                    "expires_in": LONG_LIVED_S}
        info = self.authenticate(short, now)
        if info.login != "facebook":
            raise rules.ApiError(rules.token_unparsable())
        return self.new_world_token(info, now, LONG_LIVED_S)

    def _ig_exchange(self, params: dict[str, str], now: float) -> dict[str, Any]:
        if params.get("grant_type") != "ig_exchange_token":
            raise rules.ApiError(rules.invalid_parameter("Unsupported grant_type"))
        self._check_client(params, with_id=False)
        info = self.authenticate(params.get("access_token"), now)
        if info.login != "instagram":
            raise rules.ApiError(rules.token_unparsable())
        return self.new_world_token(info, now, world_mod.TOKEN_LIFETIME_S)

    def new_world_token(self, info: world_mod.TokenInfo, now: float, expires_in: int) -> dict[str, Any]:
        """The answer of an exchange or refresh of a world token: a newer token of the same account."""
        issued = max(int(now), info.issued_at + 1)
        token = self.world.make_token(info.account.index, info.login, issued)
        return {"access_token": token, "token_type": "bearer", "expires_in": expires_in}


def _cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"a:{position}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        flag, position = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(":")
        if flag != "a":
            raise ValueError(flag)
        return int(position)
    except ValueError:
        raise rules.ApiError(rules.invalid_parameter("Invalid cursor")) from None


def _top_level_fields(fields: str) -> set[str]:
    """`instagram_business_account{id,username},name` -> {"instagram_business_account", "name"}."""
    from collector.simulator import api  # noqa: PLC0415  # api imports this module at its top

    return {field.split("{", 1)[0] for field in api.split_fields(fields)}


def _meta_time(ts: float) -> str:
    from collector.simulator import api  # noqa: PLC0415  # api imports this module at its top

    return api._meta_time(ts)  # the one formatter of Meta's expiry wording


# --- control endpoints ------------------------------------------------------------------------------


def add_control_routes(app: web.Application, accounts: AccountsApi) -> None:
    """`POST /__sim/users`, `POST /__sim/pages/{page_id}/link|unlink` (before the catch-all Graph route)."""

    async def link(request: web.Request) -> web.Response:
        page_id, action = request.match_info["page_id"], request.match_info["action"]
        if not accounts.has_page(page_id):
            return web.Response(status=404, body=orjson.dumps({"error": f"no page {page_id}"}),
                                content_type="application/json")
        accounts.set_linked(page_id, action == "link")
        return web.Response(body=orjson.dumps({"page_id": page_id, "linked": action == "link"}),
                            content_type="application/json")

    async def add_user(request: web.Request) -> web.Response:
        query = request.query
        try:
            ids = [i for i in query.get("ig_user_ids", "").split(",") if i]
            scopes: tuple[str, ...] = FACEBOOK_SCOPES
            if "scopes" in query:
                scopes = tuple(s for s in query["scopes"].split(",") if s)
            user = accounts.add_user(ids, pages_without_account=int(query.get("pages_without_account", "0")),
                                     scopes=scopes)
        except (KeyError, ValueError) as exc:
            return web.Response(status=400, body=orjson.dumps({"error": str(exc)}),
                                content_type="application/json")
        token = accounts.user_token(user, short_lived=query.get("short_lived") == "1")
        pages = [{"page_id": p.page_id, "ig_user_id": p.ig_user_id} for p in user.pages]
        made = {"user_id": user.user_id, "access_token": token, "pages": pages}
        return web.Response(body=orjson.dumps(made), content_type="application/json")

    app.router.add_post(r"/__sim/pages/{page_id}/{action:link|unlink}", link)
    app.router.add_post("/__sim/users", add_user)
