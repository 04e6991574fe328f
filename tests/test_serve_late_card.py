"""`serve` whose start finds no card (a unit started before the NVIDIA driver loaded): once one answers, the daemon
is armed as a start that found it would have been: the policy reaches that card's processes, the agents' socket
listens, and the recording starts; what the start read ([policy], [notify], its key files) is not read again."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from fake_pynvml import NVML_ERROR_DRIVER_NOT_LOADED, FakeNvml, GiB, gpu
from vramwatch import app
from vramwatch.attribution import PsutilInspector
from vramwatch.backends.nvml import NvmlBackend
from vramwatch.config import load
from vramwatch.daemon import Daemon
from vramwatch.errors import BackendUnavailable
from vramwatch.trace import read_trace
from vramwatch.typing import Backend

POLICY = """
[daemon]
interval = 0.05
listen = "127.0.0.1:{port}"
record = "{record}"
[policy.actions]
critical = ["notify", "signal"]
[policy.targets]
users = ["alice"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_with_a_late_card(
    cfg_file: Path,
    before_the_card: Callable[[], None] = lambda: None,
    inspector: PsutilInspector | None = None,
    *,
    cards: Sequence[FakeNvml] = (),
    until: Callable[[Daemon, int], bool] | None = None,
    **serve: Any,
) -> tuple[Daemon, dict[str, Any], list[str]]:
    """Run serve over a card that refuses the first open and answers the next ones (`before_the_card` runs just
    before each does, `cards` are the fake libraries they answer with in turn: one 24 GiB card by default) until
    `until(daemon, cards opened)` (default: five ticks on a card); stop it. The daemon, what `ready` saw of it at
    the start (and `opened`, the backends), and serve's lines."""
    cfg = load(cfg_file, {})
    calls: list[bool] = []
    opened: list[NvmlBackend] = []

    def opener(_cfg: Any, _clock: Any, *, require_gpu: bool, loop: bool = False) -> tuple[Backend, bool]:
        calls.append(require_gpu)
        if len(calls) == 1:
            raise BackendUnavailable("NVML: Driver Not Loaded", reason="driver_not_loaded")
        before_the_card()
        nvml = cards[len(opened)] if cards else FakeNvml([gpu(0, total=24 * GiB, used=3 * GiB)])
        opened.append(NvmlBackend(nvml=nvml, inspector=inspector))
        return opened[-1], False

    def ticked_five(daemon: Daemon, _opened: int) -> bool:
        return daemon.pipeline is not None and daemon.pipeline.sampler.stats.ticks >= 5

    stop = threading.Event()
    seen: dict[str, Any] = {"opened": opened}

    def ready(daemon: Daemon) -> None:
        seen.update(daemon=daemon, dispatcher=daemon.dispatcher, policy=daemon.dispatcher.policy.critical,
                    notifiers=daemon.dispatcher.notifiers, agents=daemon.agents)  # fmt: skip

    lines: list[str] = []
    runner = threading.Thread(
        target=app.serve, args=(cfg,),
        kwargs={"out": lines.append, "require_gpu": True, "stop": stop, "ready": ready, "opener": opener, **serve},
    )  # fmt: skip
    runner.start()
    try:
        pause = threading.Event()
        for _ in range(200):  # the daemon retries 1 s after a failed open, then ticks every 0.05 s
            d = seen.get("daemon")
            if d is not None and (until or ticked_five)(d, len(opened)):
                break
            pause.wait(0.05)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert all(calls)  # every open asked for a GPU
    assert len(calls) == 1 + len(opened) >= 2
    assert seen["daemon"].pipeline is not None, "no card was opened"
    return seen["daemon"], seen, lines


def test_a_card_that_answers_after_the_start_arms_the_policy_the_agents_and_the_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No card at the start (the driver not loaded yet), one a second later: the policy keeps signal (it was cut
    to log and notify while no card answered), the agents' socket is bound, and the trace records the card."""
    monkeypatch.setenv("VRAMWATCH_SOCKET", str(tmp_path / "agent.sock"))
    record = tmp_path / "day.jsonl"
    cfg_file = tmp_path / "vw.toml"
    cfg_file.write_text(POLICY.format(port=_free_port(), record=record))
    daemon, start, lines = _serve_with_a_late_card(cfg_file)
    assert start["policy"] == {"notify"}
    assert start["agents"] is None
    assert daemon.dispatcher.policy.critical == {"notify", "signal"}
    assert daemon.agents is not None
    assert daemon.agents.path == tmp_path / "agent.sock"  # (bound while serving; removed at the stop)
    header, ticks = read_trace(record)
    assert header["backend"] == "nvml"
    assert len(list(ticks)) >= 5
    assert any(line.startswith("vramwatch: NVML, driver 580.159.04 on ") and "(it answered after the start" in line
               for line in lines)  # fmt: skip
    assert lines[-1].endswith(f"; trace written to {record}")


def test_arming_reads_nothing_again_so_a_key_file_gone_since_the_start_does_not_stop_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook's HMAC key file removed while no card answered: arming keeps the notifiers the start built (the
    same objects, their counts going on) instead of reading [notify] again, which raised and ended the daemon."""
    monkeypatch.setenv("VRAMWATCH_SOCKET", str(tmp_path / "agent.sock"))
    key = tmp_path / "hmac.key"
    key.write_text("s3cret\n")
    cfg_file = tmp_path / "vw.toml"
    cfg_file.write_text(
        POLICY.format(port=_free_port(), record=tmp_path / "day.jsonl")
        + f'[[notify.webhook]]\nurl = "http://127.0.0.1:9/h"\nhmac_secret_file = "{key}"\n'
    )
    daemon, start, _ = _serve_with_a_late_card(cfg_file, before_the_card=key.unlink)
    assert daemon.dispatcher is start["dispatcher"]
    assert daemon.dispatcher.notifiers == start["notifiers"]
    assert daemon.dispatcher.policy.critical == {"notify", "signal"}


def test_the_late_card_reads_the_processes_the_policy_acts_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Armed at the late card, the dispatcher looks processes up through that card's inspector: a daemon in a pid
    namespace of its own (host_pids = false) is known as such, and its namespace guard refuses every signal and
    kill, as at a start that found the card."""
    monkeypatch.setenv("VRAMWATCH_SOCKET", str(tmp_path / "agent.sock"))
    cfg_file = tmp_path / "vw.toml"
    cfg_file.write_text(POLICY.format(port=_free_port(), record=tmp_path / "day.jsonl"))
    daemon, _, _ = _serve_with_a_late_card(cfg_file, inspector=PsutilInspector(host_pids=False))
    assert daemon.dispatcher.policy.critical == {"notify", "signal"}
    assert daemon.dispatcher._inspector.pid_namespace_matches() is False


@pytest.mark.parametrize(("from_command_line", "kept"), [(False, True), (True, False)])
def test_a_record_file_that_appeared_while_no_card_answered_is_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_command_line: bool, kept: bool
) -> None:
    """The record target, absent at the start, written by someone before the card answered: a config's `record` sets
    it aside as at any start, a --record without --force leaves it alone and does not record; never truncated."""
    monkeypatch.setenv("VRAMWATCH_SOCKET", str(tmp_path / "agent.sock"))
    record = tmp_path / "day.jsonl"
    cfg_file = tmp_path / "vw.toml"
    cfg_file.write_text(POLICY.format(port=_free_port(), record=record))
    _serve_with_a_late_card(cfg_file, before_the_card=lambda: record.write_text("PRECIOUS\n"),
                            record_flag=from_command_line)  # fmt: skip
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("day.") and p.name != "day.jsonl"]
    if kept:
        assert [p.read_text() for p in aside] == ["PRECIOUS\n"]
        assert read_trace(record)[0]["backend"] == "nvml"
    else:
        assert aside == []
        assert record.read_text() == "PRECIOUS\n"


def test_a_card_lost_and_found_again_is_not_armed_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Armed at the first card that answered, then the driver goes away and a card answers again: the same agents'
    socket goes on (not bound a second time), the running trace goes on in its file (not set aside for a new one),
    and the arming is said once."""
    monkeypatch.setenv("VRAMWATCH_SOCKET", str(tmp_path / "agent.sock"))
    record = tmp_path / "day.jsonl"
    cfg_file = tmp_path / "vw.toml"
    cfg_file.write_text(POLICY.format(port=_free_port(), record=record))
    cards = [FakeNvml([gpu(0, total=24 * GiB, used=3 * GiB)]), FakeNvml([gpu(0, total=24 * GiB, used=4 * GiB)])]
    agents: list[object] = []

    def until(daemon: Daemon, opened: int) -> bool:
        ticks = daemon.pipeline.sampler.stats.ticks if daemon.pipeline is not None else 0
        if opened == 1 and ticks >= 5 and not agents:
            agents.append(daemon.agents)
            # The driver unloads: the next read fails as the library's, and the daemon reopens after a backoff.
            cards[0].errors["nvmlDeviceGetMemoryInfo"] = NVML_ERROR_DRIVER_NOT_LOADED
        if opened == 2 and ticks >= 5:
            agents.append(daemon.agents)
            return True
        return False

    _, seen, lines = _serve_with_a_late_card(cfg_file, cards=cards, until=until)
    assert len(seen["opened"]) == 2, "the card was not found again"
    assert len(agents) == 2
    assert agents[0] is not None
    assert agents[1] is agents[0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("day.")] == ["day.jsonl"]
    _, ticks_read = read_trace(record)
    used = {reading.gpus[0].used_bytes for reading in ticks_read}
    assert used == {3 * GiB, 4 * GiB}  # both cards' ticks, in the one trace
    assert sum("(it answered after the start" in line for line in lines) == 1
