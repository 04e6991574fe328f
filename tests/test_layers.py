"""Layering: every module has a layer, imports only run down (or within its own part), and there are no cycles.

Every import counts, wherever it is written (module top, inside a function, under `TYPE_CHECKING`): a lazy or
typing-only import is still a dependency a reader has to follow. A new module must be given its layer here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "watchdog"

#: Lowest first. A module belongs to the longest prefix listed (`agenthost.monitor` before `agenthost`); it may import
#: from its own part and from lower layers, never from a higher one nor from another part of its own layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    # no vramwatch imports but each other's; the in-trainer agent is stdlib only.
    ("_version", "errors", "redact", "logs", "agent", "agenthost", "environ", "lazy", "frozen"),
    # the value objects everything passes around, and how their numbers read.
    ("model",),
    ("units", "tables"),
    # seams and the simple services on the values.
    ("typing", "config", "render", "testing", "attribution", "history", "service"),
    # the clocks (a sped-up clock wraps any `Clock`).
    ("clock",),
    # reading the world into values, writing values out; the host's end of the agent's link.
    ("trace", "sdnotify", "sampler", "agenthost.link"),
    # the domain: backends (sources), detectors (decisions), advice (knowledge), actions (effects).
    ("backends", "detectors", "advice"),
    # the step forecast: a run's optimizer steps against its schedule (uses the detectors' line fit).
    ("steps",),
    # a process's steps in bounded memory and the figures `run`, `serve` and `attach` show of them; a run's
    # schedule read from its trainer's configuration (advice) for those forecasts.
    ("stephistory", "schedule"),
    # effects; a trainer's save-now mechanism is declared beside its recognition, in `advice.trainers`.
    ("actions",),
    # joining two domains: advice for findings; the metrics of samples and findings.
    ("enrich", "exporter"),
    # the loop, and `vramwatch run`'s host-side monitor.
    ("daemon", "agenthost.monitor"),
    # what runs the loop or the monitor.
    ("attach", "agenthost.runner", "terminal"),
    # `vramwatch probe`: a short test run under the runner, and its verdict.
    ("probing",),
    # the live page and the report: drawn from the loop's snapshots and attach's post-mortem.
    ("web",),
    # the commands.
    ("app",),
    # the command line, and the package's face (`vramwatch.__version__`, the errors, the model).
    ("cli", "__init__"),
    # the `vramwatch` command: the CLI, started without what the daemon never uses.
    ("entry",),
    # `python -m vramwatch`.
    ("__main__",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "_site" not in p.parts}


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The vramwatch modules `name` imports, resolved (`from . import x` is module `x` when there is one)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                yield sub if sub in known else target or "__init__"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for full in names:
                if full == "vramwatch" or full.startswith("vramwatch."):
                    yield full.removeprefix("vramwatch").removeprefix(".") or "__init__"


def part_of(name: str) -> tuple[int, str]:
    """(layer, part): the longest listed prefix of `name`."""
    best: tuple[int, str] | None = None
    for rank, parts in enumerate(LAYERS):
        for part in parts:
            if (name == part or name.startswith(part + ".")) and (best is None or len(part) > len(best[1])):
                best = (rank, part)
    assert best is not None, f"{name} has no layer: add it to LAYERS in tests/test_layers.py"
    return best


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {t for t in imports(name, path, known) if t != name} for name, path in found.items()}


def test_every_module_has_a_layer() -> None:
    """A module nobody placed is a failure that names it."""
    found = modules()
    assert {"model", "daemon", "detectors.analysis", "agent.protocol", "web.live"} <= set(found)  # the walk sees them
    for name in found:
        part_of(name)


def test_imports_only_run_down() -> None:
    """No module imports from a higher layer, nor from another part of its own layer."""
    bad = []
    for name, targets in graph().items():
        rank, part = part_of(name)
        for target in targets:
            their_rank, their_part = part_of(target)
            if their_part != part and their_rank >= rank:
                bad.append(f"{name} (layer {rank}) -> {target} (layer {their_rank})")
    assert not bad, "imports running up or across:\n" + "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    """No module reaches itself through its imports (package `__init__` re-exports included)."""
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_are_live() -> None:
    """The resolver sees relative, aliased and package imports, so a violation could not hide."""
    edges = graph()
    assert "detectors.growth" in edges["detectors.forecast"]
    assert "detectors._format" in edges["detectors.leak"]  # `from . import _format as fmt`
    assert "model" in edges["typing"]
    assert part_of("agenthost.monitor") == (11, "agenthost.monitor")
