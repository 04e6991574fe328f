"""Copy a directory of recorded traces, rewriting each trace's ticks on the way: what `with_ballast.py` and
`resample.py` share. A trace is `NAME.jsonl` or `NAME.jsonl.gz` (gzip detected by its magic bytes, as the replay
backend does) beside `NAME.truth.json`; its workload events, `events/NAME.events.jsonl[.gz]`, and its truth file
are copied unchanged, and the rewritten trace keeps its file name.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Line = dict[str, Any]
#: (name, truth, header, ticks) -> the new (header, ticks), or None to leave that trace out.
Rewrite = Callable[[str, Line, Line, list[Line]], tuple[Line, list[Line]] | None]


def read_trace(path: Path) -> tuple[Line, list[Line]]:
    """The header and the ticks of a trace, plain or gzip-compressed."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no header")
    return lines[0], lines[1:]


def write_trace(path: Path, header: Line, ticks: list[Line]) -> None:
    """Write a trace, gzip-compressed when its name ends in .gz."""
    text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in (header, *ticks))
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())


def rewrite_corpus(src_dir: Path, dst_dir: Path, rewrite: Rewrite, pattern: str = "*.truth.json") -> Iterator[str]:
    """Rewrite every trace of `src_dir` whose truth file matches `pattern` into `dst_dir`; yields each name written."""
    (dst_dir / "events").mkdir(parents=True, exist_ok=True)
    for truth_path in sorted(src_dir.glob(pattern)):
        name = truth_path.name.removesuffix(".truth.json")
        trace = next(p for p in (src_dir / f"{name}.jsonl.gz", src_dir / f"{name}.jsonl") if p.exists())
        header, ticks = read_trace(trace)
        out = rewrite(name, json.loads(truth_path.read_text()), header, ticks)
        if out is None:
            continue
        write_trace(dst_dir / trace.name, *out)
        shutil.copy(truth_path, dst_dir / truth_path.name)
        for events in sorted((src_dir / "events").glob(f"{name}.events.jsonl*")):
            shutil.copy(events, dst_dir / "events" / events.name)
        yield name
