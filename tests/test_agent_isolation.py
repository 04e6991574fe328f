"""The in-trainer agent imports only the standard library, in a trainer's interpreter with nothing else importable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import vramwatch.agent

AGENT_DIR = Path(vramwatch.agent.__file__).resolve().parent
PACKAGE_DIR = AGENT_DIR.parent

# Runs in a fresh `python -I -S` (no site-packages, no editable-install hooks). A meta-path finder placed
# first refuses every module that is not in the standard library, and every vramwatch module outside
# agent/; the third-party names the rest of vramwatch uses are listed too, so the refusal is explicit even
# where one is importable from the standard paths. A refused import that the agent caught would still be a
# dependency, so the test also checks that nothing of vramwatch's or of BLOCKED was asked for.
_BLOCKER = """
import importlib.abc, sys

BLOCKED = {"psutil", "pynvml", "prometheus_client", "click", "structlog", "yaml", "tomli", "torch"}
refused = []  # what vramwatch asked for and did not get (the stdlib's own optional probes, e.g. `org`, aside)

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        ours = name in {"vramwatch", "vramwatch.agent", "_vramwatch_agent"} or name.startswith(
            ("vramwatch.agent.", "_vramwatch_agent.")
        )
        if top in BLOCKED or not (ours or top in sys.stdlib_module_names):
            if top in BLOCKED or top in {"vramwatch", "_vramwatch_agent"}:
                refused.append(name)
            raise ImportError("blocked outside the standard library: " + name)
        return None

sys.meta_path.insert(0, Blocker())
"""

_SUBMODULES = ("protocol", "core", "oom", "probe", "adapters")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", _BLOCKER + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_blocker_refuses_what_the_host_side_needs():
    """The fence itself works: structlog and a vramwatch module outside agent/ cannot be imported under it."""
    result = _run(
        "import types\n"
        f"pkg = types.ModuleType('vramwatch'); pkg.__path__ = [{str(PACKAGE_DIR)!r}]; sys.modules['vramwatch'] = pkg\n"
        "for name in ('structlog', 'vramwatch.model', 'vramwatch.agenthost.link'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        print('refused', name)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == [
        "refused structlog",
        "refused vramwatch.model",
        "refused vramwatch.agenthost.link",
    ]


@pytest.mark.parametrize("submodule", _SUBMODULES)
def test_agent_imports_as_part_of_vramwatch_with_only_the_standard_library(submodule: str):
    """`vramwatch.agent.<submodule>` loads without vramwatch's other modules or any third-party package."""
    result = _run(
        "import importlib, types\n"
        # A bare parent package: vramwatch/__init__.py (model, errors) must not be what makes the agent load.
        f"pkg = types.ModuleType('vramwatch'); pkg.__path__ = [{str(PACKAGE_DIR)!r}]; sys.modules['vramwatch'] = pkg\n"
        f"importlib.import_module('vramwatch.agent.{submodule}')\n"
        "import vramwatch.agent\n"
        "assert callable(vramwatch.agent.start)\n"
        "print('refused', refused)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused []"


def test_agent_loads_by_path_as_sitecustomize_loads_it():
    """Loaded from its folder alone (vramwatch not installed in the trainer's environment), every agent module
    imports, and a report it builds parses with the same module."""
    submodules = ", ".join(repr(m) for m in _SUBMODULES)
    result = _run(
        "import importlib, os\n"
        "from importlib.util import module_from_spec, spec_from_file_location\n"
        f"spec = spec_from_file_location('_vramwatch_agent', {str(AGENT_DIR / '__init__.py')!r},"
        f" submodule_search_locations=[{str(AGENT_DIR)!r}])\n"
        "agent = module_from_spec(spec); sys.modules['_vramwatch_agent'] = agent; spec.loader.exec_module(agent)\n"
        f"for name in ({submodules},):\n"
        "    importlib.import_module('_vramwatch_agent.' + name)\n"
        "protocol = agent.protocol\n"
        "hello = protocol.hello_message(pid=os.getpid(), ppid=1, t=0.0, torch_version=None, agent_version='x',"
        " python='3', signal=False)\n"
        "print(protocol.parse_report(protocol.encode(hello)).kind)\n"
        "print('refused', refused)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["hello", "refused []"]
