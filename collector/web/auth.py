"""Optional HTTP basic auth for the web UI and /metrics (`[http] basic_auth_user` + password).

The password is compared in constant time (`hmac.compare_digest`, user and password both always compared),
and a refusal says nothing about which half was wrong. Paths in `open_paths` stay open: `/healthz` for the
load balancer's and systemd's probes, the webhook for Meta (it is authenticated by its own signature).
Basic auth sends the password with every request: serve it over TLS (a reverse proxy) off loopback.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, Collection

import structlog
from aiohttp import typedefs, web

from collector import models

log = structlog.get_logger(__name__)

REALM = "ig-collector"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]



def credentials_match(header: str | None, user: str, password: models.Secret) -> bool:
    """True when an `Authorization: Basic ...` header carries exactly `user` and `password`."""
    if not header:
        return False
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, given_password = given.partition(":")
    user_ok = hmac.compare_digest(given_user.encode(), user.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.reveal().encode())
    return bool(sep) and user_ok and password_ok


def middleware(user: str, password: models.Secret, open_paths: Collection[str]) -> typedefs.Middleware:
    """An aiohttp middleware answering 401 to every request outside `open_paths` without the credentials."""
    opened = frozenset(open_paths)

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in opened or credentials_match(request.headers.get("Authorization"), user, password):
            return await handler(request)
        if request.headers.get("Authorization"):
            log.info("web_auth_refused", path=request.path, remote=request.remote)
        raise web.HTTPUnauthorized(
            text="authentication required\n",
            headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})

    return basic_auth
