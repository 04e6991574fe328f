"""The `[notify]` section: which destinations findings go to, built into Notifier objects.

```toml
[[notify.webhook]]              # any number; Slack/Mattermost incoming webhooks work as they are
url_env = "VRAMWATCH_SLACK_URL" # or url = "https://..."; a Slack URL is a secret: prefer the environment
hmac_secret_env = "VRAMWATCH_WEBHOOK_SECRET"   # or hmac_secret_file = "/etc/vramwatch/webhook.key"
include_cmdline = false         # true: add the (redacted) command line to the payload
timeout_seconds = 5
max_attempts = 4
queue_size = 256

[[notify.alertmanager]]
url = "http://127.0.0.1:9093"   # base URL; findings go to /api/v2/alerts
resend_seconds = 60             # re-send active alerts this often (endsAt = now + 4 x this)
labels = { cluster = "lab" }    # extra labels on every alert

[notify.apprise]                # needs: pip install 'vramwatch-daemon[apprise]'
urls_env = "VRAMWATCH_APPRISE_URLS"  # whitespace-separated; or urls = ["tgram://...", ...]
```

With no destination at all, findings are logged (the `notify` action's default).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tables import TableReader, hidden
from ..typing import Clock, Notifier
from .alertmanager import AlertmanagerNotifier, check_label_names
from .apprise_notifier import AppriseNotifier, load_apprise
from .payload import ProcessLookup
from .queue import DeliveryQueue
from .transport import check_url
from .webhook import WebhookNotifier

_WEBHOOK_KEYS = (
    "url", "url_env", "hmac_secret_env", "hmac_secret_file", "include_cmdline", "timeout_seconds", "max_attempts",
    "queue_size",
)  # fmt: skip
_AM_KEYS = (
    "url",
    "url_env",
    "resend_seconds",
    "timeout_seconds",
    "labels",
    "generator_url",
    "max_attempts",
    "queue_size",
)


#: What a `*_env` key may name: a shell's variable name. Anything else is not shown in an error (it may be the secret).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: ... and which of those an error names: a token can be a valid name too (`ghp_...`, `xoxb_...`), an environment
#: variable as people name them is upper case and short.
_SHOWN_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


def _from_env(reader: TableReader, environ: Mapping[str, str], env_key: str) -> str | None:
    """The value of the environment variable named by `env_key`, if that key is set; ConfigError if empty."""
    var = reader.table.get(env_key)
    if var is None:
        return None
    if not isinstance(var, str) or not _ENV_NAME.fullmatch(var):
        # Often the secret itself, pasted where its variable's name belongs: its value is never shown.
        raise reader.error(env_key, "the name of an environment variable (letters, digits, _)", var, secret=True)
    if not environ.get(var):
        shown = var if _SHOWN_ENV_NAME.fullmatch(var) else hidden(var)
        raise ConfigError(f"{reader.where} {env_key}: the environment variable {shown} is not set")
    return environ[var]


def _secret_from(reader: TableReader, environ: Mapping[str, str], *, value_key: str, env_key: str) -> str | None:
    from_env = _from_env(reader, environ, env_key)
    if from_env is not None:
        return from_env
    value = reader.table.get(value_key)
    if value is not None and (not isinstance(value, str) or not value):
        raise reader.error(value_key, "a non-empty string", value, secret=True)
    return value


def _queue(reader: TableReader, name: str) -> DeliveryQueue:
    attempts = reader.integer("max_attempts", 4, minimum=1)
    size = reader.integer("queue_size", 256, minimum=1)
    return DeliveryQueue(name, maxsize=size, max_attempts=attempts)


def _url(reader: TableReader, environ: Mapping[str, str]) -> str:
    url = _secret_from(reader, environ, value_key="url", env_key="url_env")
    if url is None:
        raise ConfigError(f"{reader.where}: url (or url_env) is required")
    return check_url(url, key=f"{reader.where} url")


class _ReadAtStart(Mapping[str, str]):
    """The environment as a reload must take it: every variable set (systemd reads `EnvironmentFile=` at start
    only, so what the next start will see is not known here), to a value a webhook URL or a secret passes with."""

    def __getitem__(self, key: str) -> str:
        return "https://set-at-start.invalid/"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


#: `build_notifiers(environ=READ_AT_START)` checks a [notify] section without the environment it will run with.
READ_AT_START: Mapping[str, str] = _ReadAtStart()


def build_notifiers(
    section: Mapping[str, Any] | None,
    *,
    lookup: ProcessLookup | None = None,
    clock: Clock | None = None,
    host: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Notifier]:
    """The notifiers a `[notify]` table asks for (empty: the dispatcher then logs); ConfigError on bad input."""
    env = os.environ if environ is None else environ
    top = TableReader(section or {}, "[notify]", ("webhook", "alertmanager", "apprise"))
    notifiers: list[Notifier] = []
    try:
        _build(top, notifiers, env=env, lookup=lookup, clock=clock, host=host)
    except BaseException:
        for built in notifiers:  # each started its delivery thread: a refused section must not leave them running
            close = getattr(built, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # the refusal is what is reported
                    close(0.0)
        raise
    return notifiers


def _build(
    top: TableReader,
    notifiers: list[Notifier],
    *,
    env: Mapping[str, str],
    lookup: ProcessLookup | None,
    clock: Clock | None,
    host: str | None,
) -> None:
    """Append the notifiers of `top` ([notify]) to `notifiers`, in order, as each is built."""
    for kind in ("webhook", "alertmanager"):
        entries = top.table.get(kind, [])
        if isinstance(entries, Mapping):
            entries = [entries]
        if not isinstance(entries, list):
            # (Often a URL, token and all, written as a plain key.)
            raise ConfigError(f"[[notify.{kind}]]: expected an array of tables, got {hidden(entries)}")
        for index, table in enumerate(entries):
            where = f"[[notify.{kind}]] #{index + 1}"
            if kind == "webhook":
                notifiers.append(_webhook(TableReader(table, where, _WEBHOOK_KEYS), env, lookup, clock, host))
            else:
                notifiers.append(_alertmanager(TableReader(table, where, _AM_KEYS), env, lookup, clock, host))
    if "apprise" in top.table:
        reader = TableReader(top.table["apprise"], "[notify.apprise]", ("urls", "urls_env"))
        var = reader.table.get("urls_env")
        if var is not None:
            text = _secret_from(reader, env, value_key="urls", env_key="urls_env") or ""
            if env is READ_AT_START:
                load_apprise()  # Apprise must be there; its URLs are only known at the next start
                return
            urls: tuple[str, ...] = tuple(text.split())
        else:
            urls = reader.strings("urls", secret=True)
        notifiers.append(AppriseNotifier(urls, host=host, lookup=lookup))


def _webhook(
    reader: TableReader, env: Mapping[str, str], lookup: ProcessLookup | None, clock: Clock | None, host: str | None
) -> WebhookNotifier:
    url = _url(reader, env)
    secret: bytes | None = None
    if "hmac_secret_env" in reader.table and "hmac_secret_file" in reader.table:
        raise ConfigError(f"{reader.where}: set hmac_secret_env or hmac_secret_file, not both")
    text = _from_env(reader, env, "hmac_secret_env")
    if text is not None:
        secret = text.encode()
    elif (path := reader.table.get("hmac_secret_file")) is not None:
        if not isinstance(path, str):
            raise reader.error("hmac_secret_file", "a file path", path)
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            why = f"cannot read {_path_shown(path)}: {exc.strerror}"
            raise ConfigError(f"{reader.where} hmac_secret_file: {why}") from None
        if not secret:
            raise ConfigError(f"{reader.where} hmac_secret_file: {_path_shown(path)} is empty")
    return WebhookNotifier(
        url, hmac_secret=secret, include_cmdline=reader.boolean("include_cmdline", False),
        timeout=reader.number("timeout_seconds", 5.0, minimum=0.001), host=host, lookup=lookup, clock=clock,
        queue=_queue(reader, "webhook"),
    )  # fmt: skip


def _alertmanager(
    reader: TableReader, env: Mapping[str, str], lookup: ProcessLookup | None, clock: Clock | None, host: str | None
) -> AlertmanagerNotifier:
    url = _url(reader, env)
    labels = reader.table.get("labels", {})
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise reader.error("labels", "a table of string values", labels)
    check_label_names(labels)
    generator = reader.table.get("generator_url")
    if generator is not None and not isinstance(generator, str):
        raise reader.error("generator_url", "a URL", generator)
    return AlertmanagerNotifier(
        url, resend_seconds=reader.number("resend_seconds", 60.0, minimum=1.0),
        timeout=reader.number("timeout_seconds", 5.0, minimum=0.001), host=host, lookup=lookup, clock=clock,
        generator_url=generator, extra_labels=dict(labels), queue=_queue(reader, "alertmanager"),
    )  # fmt: skip


def _path_shown(path: str) -> str:
    """A key file's path as an error names it: only where it looks like one (the secret itself is sometimes pasted
    there)."""
    return path if "/" in path else hidden(path)
