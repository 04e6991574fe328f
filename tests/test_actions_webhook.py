"""The webhook notifier against a real HTTP receiver on 127.0.0.1: body, Slack text, HMAC, retries, dead
receivers, back-pressure."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import wait_for
from vramwatch.actions.payload import REDACTED, alertname, redact_cmdline, rfc3339
from vramwatch.actions.queue import DeliveryQueue
from vramwatch.actions.webhook import WebhookNotifier, verify_signature
from vramwatch.errors import ConfigError
from vramwatch.model import Finding, ProcessKey, ProcessMeta, Severity
from vramwatch.testing import FakeClock

KEY = ProcessKey(4242, 1_700_000_100.25)
META = ProcessMeta(
    pid=4242, start_time=1_700_000_100.25, name="python", user="alice", container_id="abc123",
    cmdline=("python", "train.py", "--hf_token", "hf_SECRETVALUE", "WANDB_API_KEY=wb-SECRET"),
)  # fmt: skip


def finding(**overrides: object) -> Finding:
    base: dict[str, object] = {
        "kind": "oom_forecast",
        "severity": Severity.CRITICAL,
        "gpu_uuid": "GPU-1111",
        "message": "GPU 0 fills in about 3 minutes at 120 MiB/s",
        "t": 990.0,
        "process": KEY,
        "process_name": "python",
        "eta_seconds": 185.0,
        "confidence": 0.9,
        "numbers": {"gpu_index": 0, "used_bytes": 20 * 2**30, "free_bytes": 2**30, "rate": float("nan")},
        "advice": ("Enable gradient checkpointing", "Lower the batch size to 1"),
    }
    base.update(overrides)
    return Finding(**base)  # type: ignore[arg-type]


@dataclass
class Receiver:
    """A real HTTP server: records each POST, answers with scripted statuses, can hang until released."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    hang: threading.Event | None = None
    release: threading.Event = field(default_factory=threading.Event)
    got_request: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/T000/B000/secretpath"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers.items()), body))
                receiver.got_request.set()
                if receiver.hang is not None:
                    receiver.release.wait(10)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def notifiers() -> Iterator[list[WebhookNotifier]]:
    made: list[WebhookNotifier] = []
    yield made
    for n in made:
        n.close(1.0)


def make(made: list[WebhookNotifier], url: str, **kwargs: object) -> WebhookNotifier:
    queue = kwargs.pop("queue", None) or DeliveryQueue("test", backoff_seconds=0.01, max_attempts=4)
    n = WebhookNotifier(url, host="gpu-box-1", lookup=lambda key: META, queue=queue, **kwargs)  # type: ignore[arg-type]
    made.append(n)
    return n


def test_body_carries_finding_process_advice_and_slack_text(receiver: Receiver, notifiers) -> None:
    """The POSTed JSON has status, host, finding fields, the process (no cmdline) and a Slack `text`."""
    clock = FakeClock(now=1000.0, wall_offset=1_700_000_000.0)
    n = make(notifiers, receiver.url, clock=clock)
    n.notify(finding(culprit=KEY))
    assert wait_for(lambda: n.counts()["sent"] == 1)
    path, headers, raw = receiver.requests[0]
    body = json.loads(raw)
    assert path == "/hook/T000/B000/secretpath"
    assert headers["Content-Type"] == "application/json"
    assert body["status"] == "firing"
    assert body["host"] == "gpu-box-1"
    f = body["finding"]
    assert (f["kind"], f["severity"], f["gpu"], f["gpu_uuid"]) == ("oom_forecast", "critical", 0, "GPU-1111")
    assert f["eta_seconds"] == 185.0
    assert (f["tentative"], f["at_risk_pid"], f["culprit_pid"]) == (None, None, 4242)
    assert f["t"] == 990.0
    assert f["wall_time"] == pytest.approx(1_700_000_990.0)  # raised 10 s before "now" on the fake clock
    assert f["numbers"]["rate"] is None  # NaN is not JSON: sent as null
    assert body["process"] == {
        "pid": 4242, "start_time": 1_700_000_100.25, "name": "python", "user": "alice", "container": "abc123",
    }  # fmt: skip
    assert body["advice"] == ["Enable gradient checkpointing", "Lower the batch size to 1"]
    text = body["text"]
    assert text.startswith("[CRITICAL] vramwatch oom_forecast on gpu-box-1 GPU 0: GPU 0 fills in about 3 minutes")
    assert "Process: python (pid 4242, user alice)" in text
    assert "Full in about 3m 5s" in text
    assert "- Lower the batch size to 1" in text
    assert b"SECRET" not in raw
    assert b"train.py" not in raw


def test_resolved_findings_say_so(receiver: Receiver, notifiers) -> None:
    """A cleared finding is sent with status `resolved` and a RESOLVED text without advice."""
    n = make(notifiers, receiver.url)
    n.notify(finding(), cleared=True)
    assert wait_for(lambda: n.counts()["sent"] == 1)
    body = json.loads(receiver.requests[0][2])
    assert body["status"] == "resolved"
    assert body["text"].startswith("[RESOLVED]")
    assert "Advice" not in body["text"]


def test_cmdline_is_sent_only_when_asked_and_then_redacted(receiver: Receiver, notifiers) -> None:
    """include_cmdline adds the command line with token values replaced."""
    n = make(notifiers, receiver.url, include_cmdline=True)
    n.notify(finding())
    assert wait_for(lambda: n.counts()["sent"] == 1)
    raw = receiver.requests[0][2]
    assert json.loads(raw)["process"]["cmdline"] == [
        "python", "train.py", "--hf_token", REDACTED, f"WANDB_API_KEY={REDACTED}",
    ]  # fmt: skip
    assert b"SECRET" not in raw


def test_hmac_signature_verifies_over_timestamp_and_exact_body(receiver: Receiver, notifiers) -> None:
    """X-Vramwatch-Signature is HMAC-SHA256 of `<timestamp>.<body>`; a changed body no longer verifies."""
    secret = b"s3cret-key"
    n = make(notifiers, receiver.url, hmac_secret=secret)
    n.notify(finding())
    assert wait_for(lambda: n.counts()["sent"] == 1)
    _, headers, raw = receiver.requests[0]
    timestamp, signature = headers["X-Vramwatch-Timestamp"], headers["X-Vramwatch-Signature"]
    expected = hmac.new(secret, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert abs(int(timestamp) - time.time()) < 5
    assert verify_signature(secret, timestamp, raw, signature, now=time.time())
    assert not verify_signature(secret, timestamp, raw + b" ", signature, now=time.time())
    assert not verify_signature(secret, timestamp, raw, signature, now=time.time() + 3600)  # replayed later


def test_server_errors_are_retried_with_the_same_delivery_id(receiver: Receiver, notifiers) -> None:
    """500, 503, then 200: three requests carrying one delivery id, counted once as sent."""
    receiver.statuses = [500, 503, 200]
    n = make(notifiers, receiver.url)
    n.notify(finding())
    assert wait_for(lambda: n.counts()["sent"] == 1)
    assert len(receiver.requests) == 3
    assert len({h["X-Vramwatch-Delivery"] for _, h, _ in receiver.requests}) == 1
    assert n.counts()["failed"] == 0


@pytest.mark.parametrize(("status", "label"), [(400, "client error"), (302, "redirect")])
def test_client_errors_and_redirects_are_not_retried(receiver: Receiver, notifiers, status: int, label: str) -> None:
    """A 4xx or a redirect fails at once: one request, one `failed`, the redirect not followed."""
    receiver.statuses = [status]
    n = make(notifiers, receiver.url)
    n.notify(finding())
    assert wait_for(lambda: n.counts()["failed"] == 1), label
    time.sleep(0.05)
    assert len(receiver.requests) == 1


def test_a_dead_receiver_is_counted_failed_and_never_blocks(notifiers) -> None:
    """Connection refused on every attempt: notify returns at once, the delivery ends as `failed`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    n = make(notifiers, f"http://127.0.0.1:{port}/hook", queue=DeliveryQueue("dead", backoff_seconds=0.01))
    t0 = time.perf_counter()
    n.notify(finding())
    assert time.perf_counter() - t0 < 0.05
    assert wait_for(lambda: n.counts()["failed"] == 1)
    assert n.counts()["sent"] == 0


def test_notify_returns_fast_while_the_receiver_hangs(receiver: Receiver, notifiers) -> None:
    """With the receiver holding the connection open, each notify still returns in well under 50 ms."""
    receiver.hang = threading.Event()
    n = make(notifiers, receiver.url)
    n.notify(finding())
    assert receiver.got_request.wait(5)
    durations = []
    for _ in range(5):
        t0 = time.perf_counter()
        n.notify(finding())
        durations.append(time.perf_counter() - t0)
    assert max(durations) < 0.05
    receiver.release.set()
    assert wait_for(lambda: n.counts()["sent"] == 6)


def test_a_full_queue_drops_and_counts(receiver: Receiver, notifiers) -> None:
    """Receiver hanging, queue of 2: of 5 more events the 3 oldest waiting are dropped; the rest are sent."""
    receiver.hang = threading.Event()
    n = make(notifiers, receiver.url, queue=DeliveryQueue("small", maxsize=2))
    n.notify(finding(message="first"))
    assert receiver.got_request.wait(5)
    for i in range(5):
        n.notify(finding(message=f"later {i}"))
    assert n.counts()["dropped"] == 3
    receiver.release.set()
    assert wait_for(lambda: n.counts()["sent"] == 3)
    messages = [json.loads(body)["finding"]["message"] for _, _, body in receiver.requests]
    assert messages == ["first", "later 3", "later 4"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/x", "not a url", ""])
def test_only_http_urls_are_accepted(url: str) -> None:
    """Other schemes (which urllib would happily open) are a ConfigError."""
    with pytest.raises(ConfigError, match="webhook url"):
        WebhookNotifier(url)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--token", "abc"], ["--token", REDACTED]),
        (["--hf_token=abc"], [f"--hf_token={REDACTED}"]),
        (["HF_TOKEN=abc", "OPENAI_API_KEY=x"], [f"HF_TOKEN={REDACTED}", f"OPENAI_API_KEY={REDACTED}"]),
        (["--db-password", "pw", "--x"], ["--db-password", REDACTED, "--x"]),
        (["https://user:pw@host/repo.git"], [f"https://user:{REDACTED}@host/repo.git"]),
        (["--keep_tokens", "1", "--max_token_length=225"], ["--keep_tokens", "1", "--max_token_length=225"]),
        (["--token="], ["--token="]),
    ],
)
def test_redact_cmdline(argv: list[str], expected: list[str]) -> None:
    """Secret-looking flag values, NAME=value secrets and URL credentials are redacted; look-alikes are not."""
    assert redact_cmdline(argv) == expected


def test_alertname_and_timestamps() -> None:
    """Kinds become CamelCase alert names; timestamps are RFC 3339 UTC."""
    assert alertname("oom_forecast") == "VramwatchOomForecast"
    assert alertname("growth") == "VramwatchGrowth"
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
