"""esme/ has no import cycles (static, from the source: TYPE_CHECKING and function-level
imports count too), and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dgsm_integrations.esme

PACKAGE = "dgsm_integrations.esme"
ROOT = Path(dgsm_integrations.esme.__file__).parent
MODULES = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> set[str]:
    """The sibling modules ``module`` imports, anywhere in its source."""
    tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    out.add(node.module.split(".")[0])
                else:  # from . import x
                    out.update(a.name for a in node.names)
            elif node.level == 0 and node.module and node.module.startswith(PACKAGE + "."):
                out.add(node.module[len(PACKAGE) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    out.add(alias.name[len(PACKAGE) + 1:].split(".")[0])
    return out & set(MODULES)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert _cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycles_in_esme() -> None:
    graph = {m: _imports(m) - {m} for m in MODULES}
    assert graph["forwarder"]  # the graph was really read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_routing_is_pure() -> None:
    """No I/O, no event loop, no clock in the routing module."""
    tree = ast.parse((ROOT / "routing.py").read_text(encoding="utf-8"))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert not names & {"asyncio", "socket", "select", "selectors", "time", "threading"}
    assert _imports("routing") <= {"errors", "message", "status", "trust", "pdu"}


def test_each_module_imports_first() -> None:
    """Each module imported first, with no other ESME module loaded (one interpreter, the
    package forgotten between imports): a cycle that breaks at import time fails here."""
    script = (
        "import importlib, sys\n"
        f"for name in {[m for m in MODULES if m != '__main__']!r}:\n"
        f"    for loaded in [k for k in sys.modules if k.startswith({PACKAGE!r})]:\n"
        "        del sys.modules[loaded]\n"
        f"    importlib.import_module({PACKAGE!r} + '.' + name)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                         capture_output=True, text=True).stdout
    assert out == "ok\n"
