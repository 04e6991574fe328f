"""The detector registry: a detector declared in one place is analysed, configured, tracked, exported and
reachable from the command line, with no other module edited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import GIB, UUID0, gpu
from click.testing import CliRunner
from prometheus_client import generate_latest
from vramwatch.cli import main
from vramwatch.config import Config
from vramwatch.daemon import Daemon
from vramwatch.detectors import Detector, FindingTracker, analyze, config_from_table, registered
from vramwatch.detectors._context import GpuContext
from vramwatch.detectors._settings import setting, share, validate
from vramwatch.detectors.registry import detectors, register, unregister
from vramwatch.errors import ConfigError
from vramwatch.history import History
from vramwatch.model import Finding, ProcessMeta, ProcessUsage, Reading, Severity, Snapshot
from vramwatch.testing import FakeClock, ScriptedBackend


@dataclass(frozen=True, slots=True)
class ToyConfig:
    """The toy detector's one threshold, with its range beside it."""

    toy_used_share: float = setting(0.9, share)

    def __post_init__(self) -> None:
        validate(self)


def toy_detect(ctx: GpuContext, own: ToyConfig) -> Iterator[Finding]:
    """A card used beyond `toy_used_share` of its total."""
    if ctx.used_bytes is not None and ctx.total_bytes and ctx.used_bytes >= own.toy_used_share * ctx.total_bytes:
        yield Finding("toy", Severity.WARNING, ctx.uuid, f"{ctx.uuid} is used beyond the toy share", ctx.now)


TOY = Detector(kind="toy", defaults=ToyConfig(), raise_after=2, clear_after=3, per_gpu=toy_detect)


@pytest.fixture
def toy() -> Iterator[Detector[ToyConfig]]:
    with registered(TOY) as detector:
        yield detector


def _reading(used: int) -> Reading:
    return Reading(gpus=(gpu(used=used),), processes=(ProcessUsage(UUID0, 4242, used - GIB),))


def test_a_registered_detector_is_analysed_with_its_toml_settings_and_tracked(toy: Detector[ToyConfig]) -> None:
    """The toy's threshold comes from [detectors]; its findings are raised after its own raise ticks."""
    config = config_from_table({"toy_used_share": 0.5}, "f: [detectors]")
    history, tracker = History(), FindingTracker(config)
    events = []
    for t, used in enumerate([10 * GIB, 13 * GIB, 13 * GIB, 13 * GIB, 1 * GIB, 1 * GIB, 1 * GIB]):
        history.add(_snapshot(float(t), used))
        raised, cleared = tracker.update(analyze(history, config))
        events += [(t, "+", f.kind) for f in raised] + [(t, "-", f.kind) for f in cleared]
    assert events == [(2, "+", "toy"), (6, "-", "toy")]  # raised after 2 ticks over 50 %, cleared after 3 under
    assert not any(f.kind == "toy" for f in analyze(history).findings)  # at its default 90 %: nothing


def test_a_registered_detector_is_exported(toy: Detector[ToyConfig]) -> None:
    """The daemon runs the toy and serves its active finding as `vramwatch_findings_active{kind="toy"}`."""
    clock = FakeClock()
    meta = {4242: ProcessMeta(4242, 1000.0, name="train.py")}
    backend = ScriptedBackend([_reading(23 * GIB)], meta=meta, kind="simulated")
    daemon = Daemon(Config(), lambda: backend, clock=clock, detector_config=config_from_table({}, "f"))
    for _ in range(3):
        daemon.step()
        clock.advance(1)
    body = generate_latest(daemon.registry).decode()
    assert 'vramwatch_findings_active{gpu="0",kind="toy",severity="warning",tentative="false"} 1.0' in body
    assert 'vramwatch_findings_total{kind="toy",severity="warning"} 1.0' in body


def test_a_registered_detector_is_configured_and_reported_by_the_cli(toy: Detector[ToyConfig], tmp_path: Path) -> None:
    """`vramwatch --config F replay TRACE` accepts the toy's key and prints its findings; unregistered, the key
    is refused as unknown."""
    runner = CliRunner()
    trace, config = tmp_path / "t.jsonl", tmp_path / "vw.toml"
    recorded = runner.invoke(
        main, ["record", str(trace), "--simulate", "leak", "--interval", "0.01", "--duration", "0.2"]
    )
    assert recorded.exit_code == 0, recorded.output
    config.write_text("[detectors]\ntoy_used_share = 0.01\n")
    res = runner.invoke(main, ["--config", str(config), "replay", str(trace), "--json"])
    assert res.exit_code == 0, res.output
    assert "toy" in {json.loads(line)["kind"] for line in res.stdout.splitlines()}
    unregister(toy.kind)
    try:
        res = runner.invoke(main, ["--config", str(config), "replay", str(trace), "--json"])
    finally:
        register(toy)
    assert res.exit_code == 2
    assert "unknown key 'toy_used_share'" in res.stderr


def test_keys_and_kinds_are_never_shadowed(toy: Detector[ToyConfig]) -> None:
    """A second detector of a registered kind, or one that claims another's [detectors] key, is refused."""
    with pytest.raises(ValueError, match="already registered"), registered(TOY):
        pass
    other = Detector(kind="toy2", defaults=ToyConfig(), raise_after=1, clear_after=1, per_gpu=toy_detect)
    with pytest.raises(ValueError, match="toy_used_share"), registered(other):
        pass
    with pytest.raises(ConfigError, match="toy_used_share must be in"):
        config_from_table({"toy_used_share": 2.0}, "f: [detectors]")


def test_every_builtin_detector_declares_a_sound_config() -> None:
    """Each built-in detector's defaults pass their own checks and its keys are its config's fields."""
    assert config_from_table({}, "f").detectors == {}
    for d in detectors():
        values = {key: getattr(d.defaults, name) for key, name in d.config_keys().items()}
        values = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in values.items() if v is not None}
        own = config_from_table(values, "f").detectors
        assert own.get(d.kind, d.defaults) == d.defaults  # a config with no fields (oom) gets no table


def _snapshot(t: float, used: int) -> Snapshot:
    return Snapshot(t=t, wall_time=1.7e9 + t, gpus=(gpu(used=used),), processes=())
