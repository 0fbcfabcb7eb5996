"""The suite's own shape: every test function checks something.

A test that only calls code passes whatever the code returns; the issue that brought this file
found six such functions. A function counts as checking when it asserts, uses ``pytest.raises``
(``warns``, ``fail``, ``deprecated_call``), raises ``AssertionError``, or calls a helper that does
(``eventually`` and the like), followed through helpers of its own module, of ``conftest`` and of
the test modules it imports from.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PYTEST_CHECKS = {"raises", "warns", "fail", "deprecated_call"}


def _checks_directly(function: ast.AST) -> bool:
    """Whether ``function``'s own body (nested code included) asserts, raises AssertionError or uses pytest's checks."""
    for node in ast.walk(function):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, ast.Name) and raised.id == "AssertionError":
                return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in PYTEST_CHECKS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "pytest"
        ):
            return True
    return False


class _Suite:
    """Every function of every module under ``tests/``, and the names each module imports from the others."""

    def __init__(self, root: Path) -> None:
        self.defs: dict[str, dict[str, list[ast.AST]]] = {}
        self.imports: dict[str, dict[str, tuple[str, str]]] = {}
        self.tests: list[tuple[str, str, ast.AST]] = []  # (node id, module, function)
        for path in sorted(root.rglob("*.py")):
            module = path.stem
            tree = ast.parse(path.read_text(encoding="utf-8"))
            defs = self.defs.setdefault(module, {})
            imports = self.imports.setdefault(module, {})
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defs.setdefault(node.name, []).append(node)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    for alias in node.names:
                        imports[alias.asname or alias.name] = (node.module, alias.name)
            if module.startswith("test_"):
                for node in tree.body:
                    methods = node.body if isinstance(node, ast.ClassDef) and node.name.startswith("Test") else [node]
                    self.tests += [
                        (f"{path.relative_to(root)}::{f.name}", module, f)
                        for f in methods
                        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("test")
                    ]
        self._memo: dict[tuple[str, str], bool] = {}

    def _resolve(self, module: str, call: ast.Call) -> list[tuple[str, str]]:
        """The suite functions a call may reach: a name of this module or imported from a test module, or a
        method of this module (``self.compare()``)."""
        if isinstance(call.func, ast.Name):
            name = call.func.id
            if name in self.defs.get(module, {}):
                return [(module, name)]
            source, original = self.imports.get(module, {}).get(name, ("", ""))
            return [(source, original)] if original in self.defs.get(source, {}) else []
        if isinstance(call.func, ast.Attribute) and call.func.attr in self.defs.get(module, {}):
            return [(module, call.func.attr)]
        return []

    def helper_checks(self, module: str, name: str) -> bool:
        """Whether the suite function ``module.name`` checks, itself or through the helpers it calls."""
        key = (module, name)
        if key not in self._memo:
            self._memo[key] = False  # a recursive helper does not check by calling itself
            self._memo[key] = any(self.checks(module, node) for node in self.defs[module][name])
        return self._memo[key]

    def checks(self, module: str, function: ast.AST) -> bool:
        """Whether ``function`` (of ``module``) checks something, itself or through a helper."""
        if _checks_directly(function):
            return True
        return any(
            self.helper_checks(*target)
            for node in ast.walk(function)
            if isinstance(node, ast.Call)
            for target in self._resolve(module, node)
        )


def test_every_test_function_checks_something() -> None:
    """No test function under ``tests/`` passes by merely running: each asserts, expects an exception, or
    calls a helper of the suite that does."""
    suite = _Suite(TESTS)
    assert {module for _, module, _ in suite.tests} == {path.stem for path in TESTS.rglob("test_*.py")}
    idle = [name for name, module, function in suite.tests if not suite.checks(module, function)]
    assert not idle, "test functions that check nothing:\n" + "\n".join(idle)
