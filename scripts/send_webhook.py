#!/usr/bin/env python3
"""Send a signed `story_insights` delivery (or the verification handshake) to a webhook endpoint.

For operators checking a deployment end to end, and for tests. Secrets come from environment
variables, never from the command line (which other users can read in `ps`).

    IG_APP_SECRET=... scripts/send_webhook.py deliver http://127.0.0.1:8788/webhooks/instagram \\
        --ig-user-id 17841400000000001 --media-id 17887498072083520 --metric reach=44 --metric replies=0
    IG_WEBHOOK_VERIFY_TOKEN=... scripts/send_webhook.py verify http://127.0.0.1:8788/webhooks/instagram

`deliver --body-file payload.json` sends a file's bytes as they are (signed unless `--unsigned`).
Exit status: 0 when the endpoint answered 2xx, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def sign(app_secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` header value Meta sends for `body`."""
    return "sha256=" + hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def story_insights_body(ig_user_id: str, media_id: str, metrics: dict[str, int | float]) -> bytes:
    """A delivery shaped like Meta's (graph-api.md §8)."""
    payload = {"object": "instagram", "entry": [{
        "id": ig_user_id, "time": int(time.time()),
        "changes": [{"field": "story_insights", "value": {"media_id": media_id, **metrics}}],
    }]}
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _metric(text: str) -> tuple[str, int | float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    try:
        return name, int(value)
    except ValueError:
        try:
            return name, float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None


def _secret(env: str) -> str:
    value = os.environ.get(env, "")
    if not value:
        sys.exit(f"send_webhook: ${env} is not set")
    return value


def _send(request: urllib.request.Request, timeout_s: float) -> int:
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, text = response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read(4096).decode("utf-8", "replace")
    print(f"{status} {text}")
    return 0 if 200 <= status < 300 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    deliver = sub.add_parser("deliver", help="POST a signed story_insights delivery")
    deliver.add_argument("url")
    deliver.add_argument("--ig-user-id", help="entry[].id: the Instagram account")
    deliver.add_argument("--media-id", help="the story's media id")
    deliver.add_argument("--metric", action="append", type=_metric, default=[], metavar="NAME=VALUE")
    deliver.add_argument("--body-file", help="send this file's bytes instead of building a payload")
    deliver.add_argument("--app-secret-env", default="IG_APP_SECRET", metavar="VAR")
    deliver.add_argument("--unsigned", action="store_true", help="omit X-Hub-Signature-256")
    verify = sub.add_parser("verify", help="GET the subscription handshake")
    verify.add_argument("url")
    verify.add_argument("--verify-token-env", default="IG_WEBHOOK_VERIFY_TOKEN", metavar="VAR")
    parser.add_argument("--timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)

    if args.command == "verify":
        challenge = str(secrets.randbelow(10**9))
        query = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.challenge": challenge,
                                        "hub.verify_token": _secret(args.verify_token_env)})
        separator = "&" if urllib.parse.urlsplit(args.url).query else "?"
        status = _send(urllib.request.Request(f"{args.url}{separator}{query}"), args.timeout_s)
        return status

    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    elif args.ig_user_id and args.media_id and args.metric:
        body = story_insights_body(args.ig_user_id, args.media_id, dict(args.metric))
    else:
        parser.error("deliver needs --body-file, or --ig-user-id, --media-id and at least one --metric")
    headers = {"Content-Type": "application/json"}
    if not args.unsigned:
        headers["X-Hub-Signature-256"] = sign(_secret(args.app_secret_env), body)
    return _send(urllib.request.Request(args.url, data=body, headers=headers, method="POST"), args.timeout_s)


if __name__ == "__main__":
    sys.exit(main())
