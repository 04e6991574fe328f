"""One HTTP POST with the standard library, its failure sorted into "try again" or "give up".

urllib is enough for a JSON POST a few times a minute, and it keeps the daemon free of an HTTP client
dependency. Redirects are *not* followed: urllib would turn a redirected POST into a bodiless GET, and a
webhook that moved should be reconfigured, not chased. Only http and https URLs are accepted (urllib would
also open `file:` and `ftp:` URLs). URLs are never logged whole: a Slack or Mattermost webhook's path *is*
its secret, so logs name only the scheme and host (`redact_url`).
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from urllib.parse import urlsplit

from ..errors import ConfigError
from .queue import DeliveryError

# 408 Request Timeout, 425 Too Early and 429 Too Many Requests say "later", like the 5xx family.
_RETRYABLE_4XX = frozenset({408, 425, 429})
_MAX_RESPONSE_BYTES = 64 * 1024


def check_url(url: object, *, key: str) -> str:
    """`url` if it is an absolute http(s) URL, else ConfigError naming `key`."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urllib checks the port only when it is read: a bad one must fail here, not at send
    except ValueError:
        # (Not urllib's words: they quote the part they could not read, which may be a token.)
        raise ConfigError(
            f"{key}: expected an http:// or https:// URL, got a malformed one (its host or port)"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected an http:// or https:// URL with a host, got scheme {parts.scheme!r}")
    return url


def redact_url(url: str) -> str:
    """Scheme, host and port only: what a log may say about a webhook URL."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None  # urllib then raises HTTPError with the 3xx code


_OPENER = urllib.request.build_opener(_NoRedirect)


def _retry_after(headers: Message | None) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form is rare from webhook receivers; backoff alone then
    return seconds if seconds >= 0 else None


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST `body`; the 2xx status on success, DeliveryError otherwise (retryable for 5xx/408/425/429 and
    network errors, final for other 4xx and for redirects)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310 - scheme checked
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(_MAX_RESPONSE_BYTES)
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        code = exc.code
        retry_after = _retry_after(exc.headers)
        exc.close()
        if 300 <= code < 400:
            raise DeliveryError(f"HTTP {code} (redirects are not followed)", retryable=False) from None
        retryable = code >= 500 or code in _RETRYABLE_4XX
        raise DeliveryError(f"HTTP {code}", retryable=retryable, retry_after=retry_after) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DeliveryError(f"{type(exc).__name__}: {reason}", retryable=True) from None
