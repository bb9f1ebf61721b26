"""Masking of access tokens and app secrets in any text that may reach a log line or an exception.

Two nets, because either alone leaks:
- by shape: the value of a secret-bearing parameter (`access_token=…`, `"client_secret": "…"`, URL-encoded
  forms too) and bearer-like runs with Meta's token prefixes (`IGAA…`, `IGQV…`, `EAA…`);
- by value: every secret registered at runtime (`register_secret`), wherever it appears, whatever its shape
  (a test token `tok-1234567`, a hex app secret).

A secret registered with an `owner` (an account) is one of that owner's tokens: only its latest
`KEEP_PER_OWNER` stay registered by value, so a daemon that refreshes 10,000 accounts' tokens every week does
not keep every token it ever used (~150 MB a year); the ones it drops are no longer in use, and Meta's token
shapes are masked anyway. Without an owner (configured tokens, app secrets) a secret stays for the process.

`redact` runs in the structlog processor chain on every log event, so it is kept to a few compiled regex
passes; registered secrets are looked up in a set (O(1) per candidate run), not matched as one huge
alternation, because a daemon may hold 10,000 account tokens.
"""

from __future__ import annotations

import collections
import re
import urllib.parse

MASK = "***"

# Query/JSON/form keys whose values are secrets.
_SECRET_KEYS = ("access_token", "client_secret", "input_token", "fb_exchange_token")
_KEYS = "|".join(_SECRET_KEYS)

# `key=value` in URLs and query strings (also `key%3Dvalue` when a whole URL was percent-encoded once).
_QUERY_RE = re.compile(rf"((?:{_KEYS})(?:=|%3D|%3d))[^&\s\"'#<>,;)]*")
# `"key": "value"` and `'key': 'value'` in JSON or Python reprs.
_JSON_RE = re.compile(rf"""((["'])(?:{_KEYS})\2\s*:\s*)(["'])(?:\\.|(?!\3).)*\3""")
# Bearer-like tokens by Meta's prefixes: Instagram (IGAA, IGQV) and Facebook (EAA) tokens are long
# base62 runs; 20+ characters keeps ordinary words such as "EAAB" alone.
_BEARER_RE = re.compile(r"(?<![A-Za-z0-9])(?:IGAA|IGQV|EAA)[A-Za-z0-9_\-]{20,}")

# Candidate runs for registered secrets made of token characters (maximal runs: a secret glued to other
# letters or digits is not found by value; the shape nets above still cover Meta's real tokens).
_RUN_RE = re.compile(r"[A-Za-z0-9_\-]{6,}")
_RUN_CHARS = re.compile(r"[A-Za-z0-9_\-]+")
_MIN_SECRET_CHARS = 6  # shorter values would mask ordinary words and numbers everywhere

KEEP_PER_OWNER = 2  # an owner's current token and the one before it (a call may still carry it)

_run_secrets: set[str] = set()  # secrets made only of run characters: matched by set lookup
_odd_secrets: list[str] = []  # anything else (spaces, slashes, ...): matched by plain substring search
_permanent: set[str] = set()  # values registered without an owner
# owner -> its latest values, oldest first (a list: a deque costs ~600 bytes, times 10,000 accounts)
_owned: dict[str, list[str]] = {}
_owner_count: collections.Counter[str] = collections.Counter()  # value -> how many owners hold it


def register_secret(value: str, *, owner: str | None = None) -> None:
    """Mask every later occurrence of `value` (and of its URL-encoded form) in `redact`'s output.

    `owner`: the account the value is a token of; only the owner's latest `KEEP_PER_OWNER` values stay
    registered. Without one, the value stays registered, unless an owner holds it already (a call that
    carries an account's token as a parameter: it goes when the owner's newer tokens push it out).

    Values shorter than 6 characters are ignored: masking them would garble unrelated text, and no real
    token or secret is that short.
    """
    if len(value) < _MIN_SECRET_CHARS:
        return
    if owner is None:
        if value not in _owner_count:
            _permanent.add(value)
            _add_forms(value)
        return
    held = _owned.get(owner)
    if held is None:
        held = _owned[owner] = []
    elif value in held:
        return
    held.append(value)
    _owner_count[value] += 1
    _add_forms(value)
    if len(held) > KEEP_PER_OWNER:
        _release(held.pop(0))


def is_registered(value: str) -> bool:
    return value in _permanent or value in _owner_count


def forget_secrets() -> None:
    """Drop every registered secret (tests use this to stay independent)."""
    _run_secrets.clear()
    _odd_secrets.clear()
    _permanent.clear()
    _owned.clear()
    _owner_count.clear()


def _forms(value: str) -> set[str]:
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe="")}


def _add_forms(value: str) -> None:
    for form in _forms(value):
        if _RUN_CHARS.fullmatch(form):
            _run_secrets.add(form)
        elif form not in _odd_secrets:
            _odd_secrets.append(form)


def _release(value: str) -> None:
    """One owner let `value` go: unregistered once no owner holds it and it was not registered without one."""
    _owner_count[value] -= 1
    if _owner_count[value] > 0:
        return
    del _owner_count[value]
    if value in _permanent:
        return
    for form in _forms(value):
        _run_secrets.discard(form)
        if form in _odd_secrets:
            _odd_secrets.remove(form)


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    if run in _run_secrets:
        return MASK
    # A run right after a percent escape carries its two hex digits ("%3Dsecret" -> run "3Dsecret").
    start = match.start()
    if start > 0 and match.string[start - 1] == "%" and run[2:] in _run_secrets:
        return run[:2] + MASK
    return run


def redact(text: str) -> str:
    """`text` with every secret it contains replaced by `***`."""
    text = _QUERY_RE.sub(rf"\g<1>{MASK}", text)
    text = _JSON_RE.sub(rf"\g<1>\g<3>{MASK}\g<3>", text)
    text = _BEARER_RE.sub(MASK, text)
    if _run_secrets:
        text = _RUN_RE.sub(_mask_run, text)
    for secret in _odd_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by `***` (URL userinfo, `?password=`, or `password=` keyword), for
    printing which database is used without showing its secret."""
    if "://" not in dsn:
        return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostinfo}" if has_password else netloc
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

