"""vramwatch's sitecustomize: `vramwatch run` puts this folder first on PYTHONPATH of the command it runs.

Python's `site` module imports the first `sitecustomize` on sys.path at start-up, in every interpreter
(the launcher, `accelerate`/`torchrun` workers, spawned processes). This one:
1. runs the `sitecustomize` that would have run without us (the next one on sys.path after this folder:
   a distribution's, a virtualenv's, the user's own), so nothing that already worked changes;
2. then, if `VRAMWATCH_AGENT=1` and the interpreter is new enough, waits for `import torch` (a finder
   that finds nothing) and only then loads and starts the agent: a process that never imports torch pays
   for this file alone. The agent comes from an importable vramwatch with this same layout (so user code
   that imports `vramwatch.agent` shares the one agent), or else is loaded by path from the folder above
   this one as `_vramwatch_agent` (the trainer's environment need not have vramwatch installed).

It must never break the interpreter it runs in: an agent that fails to start prints one line and the
program goes on; an error in the chained sitecustomize propagates, so `site` reports it exactly as it
would have without us. Kept to syntax that old interpreters parse, since it runs in whatever Python the
command starts.
"""

# ruff: noqa: PTH100, PTH109, PTH113, PTH118, PTH120, S110, UP031, UP036
# Runs at start-up of every interpreter the command starts, whatever its version: plain os.path (no pathlib
# import on that hot path), %-formatting and an explicit version check are on purpose.

import os
import sys
import types

_MARKER = os.path.join("agent", "_site", "sitecustomize.py")


def _here() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _chain_next_sitecustomize() -> None:
    here = _here()
    after = []
    seen_self = False
    for entry in sys.path:
        try:
            resolved = os.path.abspath(entry or os.getcwd())
        except (OSError, TypeError, ValueError):
            continue
        if resolved == here:
            seen_self = True
            continue
        if seen_self:
            after.append(entry)
    if not seen_self:  # imported some other way than from PYTHONPATH: search everything but us
        after = [entry for entry in sys.path if entry and os.path.abspath(entry) != here]
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    spec = PathFinder.find_spec("sitecustomize", after)
    if spec is None or spec.loader is None:
        return
    if spec.origin and os.path.abspath(spec.origin) == os.path.abspath(__file__):
        return
    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module  # what `import sitecustomize` would have given without us
    spec.loader.exec_module(module)


def _load_agent() -> types.ModuleType:
    from importlib import import_module
    from importlib.util import find_spec, module_from_spec, spec_from_file_location

    try:
        installed = find_spec("vramwatch")
    except (ImportError, ValueError):
        installed = None
    # Only our own layout: an unrelated "vramwatch" distribution might import torch at import time.
    locations = list(getattr(installed, "submodule_search_locations", None) or [])
    if any(os.path.isfile(os.path.join(location, _MARKER)) for location in locations):
        try:
            agent = import_module("vramwatch.agent")
            if hasattr(agent, "_start_from_sitecustomize"):
                return agent
        except Exception:
            pass
    agent_dir = os.path.dirname(_here())
    spec = spec_from_file_location(
        "_vramwatch_agent", os.path.join(agent_dir, "__init__.py"), submodule_search_locations=[agent_dir]
    )
    if spec is None or spec.loader is None:
        raise ImportError("cannot load the agent from " + agent_dir)
    module = module_from_spec(spec)
    sys.modules["_vramwatch_agent"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("_vramwatch_agent", None)
        raise
    return module


def _start_agent() -> None:
    try:
        _load_agent()._start_from_sitecustomize(torch_importing=True)
    except Exception as exc:
        sys.stderr.write("vramwatch: agent not started in pid %d: %r\n" % (os.getpid(), exc))


class _TorchImportHook:
    """Finds nothing; loads and starts the agent when `import torch` begins. Until then (and forever in a
    process that never imports torch) the agent costs this one method call per new import. It stays in
    sys.meta_path as a no-op: removing a finder while the import system walks that list skips the next."""

    def __init__(self) -> None:
        self.fired = False

    def find_spec(self, name: str, _path: object = None, _target: object = None) -> None:
        if self.fired or name != "torch":
            return
        self.fired = True
        _start_agent()


def _arm() -> None:
    if os.environ.get("VRAMWATCH_AGENT", "") not in ("1", "true", "yes", "on"):
        return
    if sys.version_info < (3, 10):
        return  # the agent's code needs 3.10; the program itself is unaffected
    if "torch" in sys.modules:  # the chained sitecustomize imported it
        _start_agent()
    else:
        sys.meta_path.insert(0, _TorchImportHook())


try:
    _chain_next_sitecustomize()
finally:
    _arm()
