"""Building notifiers from [notify], the optional Apprise extra, and the log notifier."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from vramwatch.actions.alertmanager import AlertmanagerNotifier
from vramwatch.actions.apprise_notifier import AppriseNotifier
from vramwatch.actions.log_notifier import LogNotifier
from vramwatch.actions.notify_config import build_notifiers
from vramwatch.actions.webhook import WebhookNotifier
from vramwatch.errors import ConfigError
from vramwatch.model import Finding, ProcessKey, Severity


@pytest.fixture
def no_apprise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)  # makes `import apprise` raise ImportError


def test_apprise_absent_is_a_config_error_that_says_what_to_install(no_apprise: None) -> None:
    """Without the apprise package the notifier refuses to start and names the extra to install."""
    with pytest.raises(ConfigError, match=r"pip install 'vramwatch-daemon\[apprise\]'"):
        AppriseNotifier(["json://localhost"])
    with pytest.raises(ConfigError, match=r"vramwatch-daemon\[apprise\]"):
        build_notifiers({"apprise": {"urls": ["json://localhost"]}})


def test_build_notifiers_reads_urls_and_secrets_from_the_environment(tmp_path: Path) -> None:
    """Webhook URL and HMAC key may come from environment variables or a file; each entry becomes a notifier."""
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    section = {
        "webhook": [
            {"url_env": "SLACK_URL", "hmac_secret_env": "HOOK_KEY", "include_cmdline": True},
            {"url": "https://example.invalid/hook", "hmac_secret_file": str(key_file), "max_attempts": 2},
        ],
        "alertmanager": [{"url": "http://127.0.0.1:9093", "resend_seconds": 30, "labels": {"cluster": "lab"}}],
    }
    env = {"SLACK_URL": "https://hooks.slack.invalid/services/T/B/X", "HOOK_KEY": "env-secret"}
    notifiers = build_notifiers(section, environ=env, host="h")
    try:
        first, second, am = notifiers
        assert isinstance(first, WebhookNotifier)
        assert isinstance(second, WebhookNotifier)
        assert first.url == env["SLACK_URL"]
        assert first.include_cmdline
        assert first.destination == "https://hooks.slack.invalid"  # what logs may show
        assert first._secret == b"env-secret"
        assert second._secret == b"file-secret"
        assert second.queue.max_attempts == 2
        assert isinstance(am, AlertmanagerNotifier)
        assert am.alerts_url == "http://127.0.0.1:9093/api/v2/alerts"
        assert am.resend_seconds == 30
    finally:
        for n in notifiers:
            n.close(0.5)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"slack": {}}, r"\[notify\]: unknown key 'slack'"),
        ({"webhook": [{}]}, r"\[\[notify.webhook\]\] #1: url \(or url_env\) is required"),
        ({"webhook": [{"url_env": "UNSET_VAR"}]}, r"url_env: the environment variable UNSET_VAR is not set"),
        ({"webhook": [{"url": "file:///etc/passwd"}]}, r"#1 url: expected an http:// or https:// URL"),
        ({"webhook": [{"url": "http://x", "timeout": 3}]}, r"#1: unknown key 'timeout'"),
        ({"webhook": [{"url": "http://x", "hmac_secret_file": "/nonexistent/key"}]}, r"cannot read /nonexistent/key"),
        ({"alertmanager": [{"url": "http://x", "labels": {"bad-name": "v"}}]}, r"'bad-name' is not a valid label"),
        ({"alertmanager": [{"url": "http://x", "resend_seconds": 0}]}, r"resend_seconds: expected a number >= 1"),
        ({"webhook": "http://x"}, r"\[\[notify.webhook\]\]: expected an array of tables"),
    ],
)
def test_bad_notify_sections_name_the_key(section: dict[str, Any], message: str) -> None:
    """Each mistake in [notify] is a ConfigError naming the entry and key."""
    with pytest.raises(ConfigError, match=message):
        build_notifiers(section, environ={})


def test_no_destinations_builds_nothing() -> None:
    """An empty or absent [notify] yields no notifiers (the dispatcher then logs)."""
    assert build_notifiers(None) == []
    assert build_notifiers({}) == []


def test_log_notifier_levels_and_fields() -> None:
    """Critical findings log at error, warnings at warning, cleared ones at info, with pid and advice."""
    f = Finding(
        kind="oom_forecast", severity=Severity.CRITICAL, gpu_uuid="GPU-0", message="full soon", t=1.0,
        process=ProcessKey(9, 1.0), process_name="python", eta_seconds=61.26, advice=("lower batch",),
    )  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        LogNotifier().notify(f)
        LogNotifier().notify(Finding("growth", Severity.WARNING, None, "growing", 1.0))
        LogNotifier().notify(f, cleared=True)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("finding_raised", "error"), ("finding_raised", "warning"), ("finding_cleared", "info"),
    ]  # fmt: skip
    assert logs[0]["pid"] == 9
    assert logs[0]["eta_seconds"] == 61.3
    assert logs[0]["advice"] == ["lower batch"]
