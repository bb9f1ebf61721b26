"""The collector's exception tree.

Every error the collector raises on purpose derives from `CollectorError`; the docstring of each class is
its default message. Foreign exceptions (aiohttp, asyncio timeouts, asyncpg, tomllib) are translated into
this tree at exactly one boundary each (the Graph client, storage, config) and chained with ``from exc``.

    CollectorError
    ├── ConfigError                 bad config file, accounts file or CLI usage (exit 2)
    ├── StorageError                database unreachable, migration failed (exit 3)
    ├── ShutdownRequested           a signal asked the pass to stop
    └── GraphError                  anything that went wrong talking to the Graph API
        ├── GraphTransportError     timeout, connection reset, truncated or non-JSON body
        └── GraphApiError           Meta answered with an error envelope (or an HTTP 5xx)
            ├── Throttled           codes 4, 17, 32, 613, 80001, 80002 (and 341)
            ├── TokenInvalid        code 190 / 102 (subcode tells expired vs revoked)
            ├── PermissionDenied    code 10 (not "not enough viewers"), 200-299
            ├── UnsupportedMetric   code 100 naming metrics that the object does not support
            ├── MetricTypeRequired  code 100 "should be specified with parameter metric_type=total_value"
            ├── NotEnoughViewers    code 10 "Not enough viewers for the media to show insights"
            ├── PreConversionMedia  code 100 / subcode 2108006
            ├── ObjectNotFound      code 100 / subcode 33 (GraphMethodException)
            ├── RangeTooLong        code 100 "There cannot be more than 30 days ... between since and until"
            ├── InvalidParameter    any other code 100
            └── ServerError         codes 1, 2, is_transient, HTTP 5xx
"""

from __future__ import annotations

from typing import Any


class CollectorError(Exception):
    """The collector failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(CollectorError):
    """The configuration is invalid.

    `source` names the file (and line or key) the problem is in, so the operator can go straight to it.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class StorageError(CollectorError):
    """The database could not be used."""


class ShutdownRequested(CollectorError):
    """A signal asked the collector to stop."""


class GraphError(CollectorError):
    """The Graph API call failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        http_status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool = False,
        regain_s: float | None = None,
    ) -> None:
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        # Seconds until Meta says access is regained (from X-Business-Use-Case-Usage), when known.
        self.regain_s = regain_s
        # The `data` items of an answer that carried an error beside them (a page with data plus an error
        # object): what was fetched, which the caller stores before handling the error (docs/errors.md).
        self.partial: list[dict[str, Any]] | None = None
        super().__init__(message)

    def describe(self) -> str:
        """A one-line, token-free description for logs and the status_detail column."""
        parts = [str(self)]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.subcode is not None:
            parts.append(f"subcode={self.subcode}")
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.fbtrace_id:
            parts.append(f"fbtrace_id={self.fbtrace_id}")
        return " ".join(parts)


class GraphTransportError(GraphError):
    """The Graph API could not be reached or sent an unreadable answer."""


class GraphApiError(GraphError):
    """The Graph API answered with an error."""


class Throttled(GraphApiError):
    """The Graph API throttled the call."""

    @property
    def scope(self) -> str:
        """`app` when the whole app is limited (code 4, 341); `user` when the user behind the access token
        is (code 17: every account whose calls use that token is limited with it); else `account`."""
        if self.code in (4, 341):
            return "app"
        return "user" if self.code == 17 else "account"


class TokenInvalid(GraphApiError):
    """The access token is invalid or expired."""


class PermissionDenied(GraphApiError):
    """The token lacks a permission this call needs."""


class UnsupportedMetric(GraphApiError):
    """The object does not support some of the requested metrics."""

    def __init__(self, message: str | None = None, *, metrics: frozenset[str] = frozenset(),
                 allowed: frozenset[str] | None = None, **kwargs: object) -> None:
        # `metrics`: the names Meta rejected; `allowed`: the full list when Meta's message gives one
        # ("metric[0] must be one of the following values: ...").
        self.metrics = metrics
        self.allowed = allowed
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class MetricTypeRequired(GraphApiError):
    """Some metrics must be requested with metric_type=total_value (or must not be)."""

    def __init__(self, message: str | None = None, *, metrics: frozenset[str] = frozenset(),
                 needs_total_value: bool = True, **kwargs: object) -> None:
        self.metrics = metrics
        # False for "(#100) The following metric (follower_count) is incompatible with the metric type
        # (total_value)": those metrics must be asked for as time_series instead.
        self.needs_total_value = needs_total_value
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class NotEnoughViewers(GraphApiError):
    """Not enough viewers for the media to show insights."""


class PreConversionMedia(GraphApiError):
    """The media was posted before the account was converted to a business account."""


class ObjectNotFound(GraphApiError):
    """The object does not exist, cannot be loaded, or does not support this operation."""


class RangeTooLong(GraphApiError):
    """The since/until window is longer than the API allows."""


class InvalidParameter(GraphApiError):
    """The Graph API rejected a parameter."""


class ServerError(GraphApiError):
    """The Graph API had a (possibly transient) server-side error."""
