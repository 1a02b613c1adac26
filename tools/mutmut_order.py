"""A pytest plugin for `make mutation`: run the selected tests in the suite's own order.

mutmut hands pytest the node ids of the tests that cover a mutant from a set, so they run
in an order that changes with the interpreter's hash seed. A test that leaves shared state
behind then fails in some orders, and mutmut counts that as a kill (or, in its clean run,
stops). Sorting the items back into the order a plain `pytest` collects them (files by
path, tests by where they are defined, parameters in declaration order) makes a verdict
depend on the mutant alone. Loaded with `-p tools.mutmut_order` (pyproject's [tool.mutmut]).
"""

from __future__ import annotations

import pytest


def _position(item: pytest.Item) -> tuple[str, int, tuple[int, ...], str]:
    path, line, _ = item.location
    callspec = getattr(item, "callspec", None)
    indices = tuple(getattr(callspec, "indices", {}).values()) if callspec else ()
    return (path, line if line is not None else -1, indices, item.nodeid)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_position)
