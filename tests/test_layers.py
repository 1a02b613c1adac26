"""The arrows point down: read from the source's imports (ast), not from running it.

- no import cycle among remediation's modules (lazy imports inside functions count too:
  a cycle hidden in a function is still a cycle);
- the pure core imports nothing of the shell and nothing of Azure's SDKs;
- the local Azure (localazure/) never imports the app it stands in for;
- only the act step sends to the install queue or PUTs the extension.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "remediation"
CORE = {"config", "model", "events", "classify", "facts", "policy"}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {
            target.split(".")[1]
            for target in imports(path)
            if target.startswith("remediation.") and target.split(".")[1] in modules
        } - {name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle, as the path that closes it, or []."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_cycle_finder_finds_a_cycle_and_only_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_remediation_has_no_import_cycle():
    assert cycle(graph()) == []


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_pure_core_imports_only_the_core_and_no_azure_sdk(module):
    found = imports(PACKAGE / f"{module}.py")
    shell = {name for name in found if name.startswith("remediation.")}
    assert {name.split(".")[1] for name in shell} <= CORE
    assert not [name for name in found if name.split(".")[0] == "azure"]


def test_the_local_azure_never_imports_the_app():
    offenders = {
        path.name: sorted(name for name in imports(path) if name.split(".")[0] == "remediation")
        for path in (ROOT / "localazure").glob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize(
    "call", [r"\.install_extension\(", r"\bqueue\.send\(", r"apply_subscription_actions\("]
)
def test_only_the_act_step_puts_the_extension_or_queues_an_install(call):
    callers = {
        path.name
        for path in PACKAGE.glob("*.py")
        if path.name not in {"arm.py", "queues.py"} and re.search(call, path.read_text())
    }
    assert callers == {"act.py"}
