"""Config values that parse as TOML but would quietly disable something: NaN and infinities, fractions where a
count is meant, malformed URLs, and names (finding kinds, process statuses) nobody uses."""

from __future__ import annotations

import math
from typing import Any

import psutil
import pytest
from vramwatch.actions.notify_config import build_notifiers
from vramwatch.actions.policy import parse_policy
from vramwatch.actions.signals import verify_identity
from vramwatch.detectors import config_from_table
from vramwatch.detectors.stale import STATUSES
from vramwatch.errors import ConfigError
from vramwatch.model import ProcessKey


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("identity_tolerance_seconds", math.nan),
        ("identity_tolerance_seconds", math.inf),
        ("cooldown_seconds", math.nan),
        ("cooldown_seconds", -math.inf),
    ],
)
def test_a_policy_refuses_numbers_that_are_not_finite(key: str, value: float) -> None:
    """`[policy]` refuses NaN and infinities, naming the key (a NaN tolerance would verify any pid's identity)."""
    with pytest.raises(ConfigError, match=rf"\[policy\] {key}: expected a number"):
        parse_policy({key: value})


def test_an_identity_check_fails_closed_on_a_nan_tolerance() -> None:
    """Were a NaN tolerance to reach the identity check, a pid whose start time differs is still refused."""
    key = ProcessKey(4242, 100.0)
    check = verify_identity(key, start_time_of=lambda _pid: 160.0, tolerance_seconds=math.nan)
    assert not check.ok
    assert "reused" in check.reason


def _webhook(**extra: Any) -> dict[str, Any]:
    return {"webhook": [{"url": "http://127.0.0.1:9/hook", **extra}]}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"webhook": [{"url": "http://127.0.0.1:99999/hook"}]}, r"url: expected an http:// or https:// URL, got a mal"),
        ({"webhook": [{"url": "http://[::1"}]}, r"url: expected an http:// or https:// URL, got a malformed"),
        ({"alertmanager": [{"url": "http://[::1"}]}, r"url: expected an http:// or https:// URL, got a malformed"),
        (_webhook(max_attempts=math.inf), r"max_attempts: expected a whole number >= 1"),
        (_webhook(max_attempts=1.5), r"max_attempts: expected a whole number >= 1"),
        (_webhook(queue_size=0), r"queue_size: expected a whole number >= 1"),
        (_webhook(timeout_seconds=math.nan), r"timeout_seconds: expected a number"),
        (_webhook(timeout_seconds=math.inf), r"timeout_seconds: expected a number"),
    ],
)
def test_a_notifier_refuses_values_that_would_fail_every_delivery(section: dict[str, Any], message: str) -> None:
    """A malformed URL, a port out of range, a fractional or infinite count and a non-finite timeout are config
    errors at start-up, not a traceback (or a failure at every delivery) later."""
    with pytest.raises(ConfigError, match=message):
        build_notifiers(section, environ={})


def test_whole_counts_are_still_accepted_as_floats_that_are_whole() -> None:
    """`max_attempts = 3.0` is three attempts: only a fraction is refused."""
    (notifier,) = build_notifiers(_webhook(max_attempts=3.0), environ={})
    assert notifier.queue.max_attempts == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("kinds", [["oom-forecast"], ["oom_forecast", "presure"]])
def test_a_policy_refuses_a_finding_kind_nobody_raises(kinds: list[str]) -> None:
    """A misspelt kind in `act_on_kinds` is refused with the known kinds, instead of a policy that never acts."""
    with pytest.raises(ConfigError, match=r"act_on_kinds: unknown finding kind .*known: .*oom_forecast"):
        parse_policy({"act_on_kinds": kinds})
    assert parse_policy({"act_on_kinds": ["oom", "contention"]}).act_on_kinds == {"oom", "contention"}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"enter_ticks": {"presure": 3}}, r"\[detectors.enter_ticks\]: unknown finding kind 'presure'"),
        ({"exit_ticks": {"growht": 3}}, r"\[detectors.exit_ticks\]: unknown finding kind 'growht'"),
        ({"enter_ticks": {"pressure": 2.5}}, r"enter_ticks\] pressure: expected a whole number of ticks"),
        ({"enter_ticks": 2}, r"enter_ticks: expected a table, got 2"),
        ({"stale_statuses": ["nope"]}, r"stale_statuses: unknown status 'nope'"),
        ({"stale_statuses": "zombie"}, r"stale_statuses: expected a list, got 'zombie'"),
        ({"noise_bytes": 1.5}, r"noise_bytes: expected a whole number, got 1.5"),
        ({"min_rise_bytes": math.inf}, r"min_rise_bytes: expected a whole number, got inf"),
        ({"settle_seconds": math.nan}, r"settle_seconds: expected a finite number, got nan"),
    ],
)
def test_detector_settings_refuse_names_and_numbers_that_would_never_apply(table: dict[str, Any], message: str) -> None:
    """`[detectors]` refuses a kind or status nobody uses, a fraction where a count of ticks or bytes is meant,
    and NaN or infinities, with the key in words a config file uses (not Python's type names)."""
    with pytest.raises(ConfigError, match=message):
        config_from_table(table, "f: [detectors]")


def test_the_known_statuses_are_psutils() -> None:
    """`stale_statuses` is checked against the statuses psutil can report, all of them."""
    assert {getattr(psutil, name) for name in dir(psutil) if name.startswith("STATUS_")} == STATUSES
