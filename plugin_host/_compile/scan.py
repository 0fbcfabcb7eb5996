"""The AST security scan of sandbox code: what the security profiles forbid, found without running it.

:func:`scan_source` reads one module's AST; :mod:`plugin_host.compiler` runs it on every module
it compiles (``restricted`` turns findings into a :class:`~plugin_host.errors.SecurityViolationError`,
``standard`` into warnings, ``permissive`` skips the scan).

The static scan is defence in depth, not a security boundary: code can always reach a
forbidden function in ways no static scan sees (``getattr(os, name)``).
"""

from __future__ import annotations

import ast
import re
from typing import Iterable

from ..errors import CompilationError

__all__ = ["Finding", "scan_source"]

Finding = tuple[str, int, str]
"""(file, line, message)."""

_BANNED_MODULES = {
    "subprocess": "starts processes",
    "_posixsubprocess": "starts processes",
    "pty": "starts processes",
    "multiprocessing": "starts processes",
    "_multiprocessing": "starts processes",
    "socket": "opens network connections",
    "_socket": "opens network connections",
    "ctypes": "calls native code",
    "_ctypes": "calls native code",
}
_OS_MODULES = ("os", "posix")
_OS_CALLS = re.compile(r"(system|popen|fork|forkpty|exec\w*|spawn\w*)")
_CODE_BUILTINS = ("eval", "exec", "compile", "__import__")
_SHADOWABLE = frozenset(_CODE_BUILTINS + ("open",))
_OPENERS = ("builtins.open", "io.open")
_PATH_CLASSES = ("pathlib.Path", "pathlib.PosixPath", "pathlib.PurePath", "pathlib.PurePosixPath")
_PARENT_STEP = re.compile(r"(^|[/\\])\.\.([/\\]|$)")


def scan_source(source: str, path: str) -> list[Finding]:
    """Scan one module's AST for what the security profiles forbid; no code runs.

    Finds imports of process, network and native-code modules (``subprocess``, ``socket``,
    ``ctypes``, ``multiprocessing`` and their private twins), calls of ``os.system``,
    ``os.popen``, ``os.exec*``, ``os.spawn*`` and ``os.fork`` (under any alias), calls of the
    builtins ``eval``, ``exec``, ``compile`` and ``__import__`` (unless the module defines its
    own), ``importlib.import_module`` of a forbidden module, and ``open`` (or ``io.open``,
    ``pathlib.Path(...).open/write_text/write_bytes``) for writing a literal path that is absolute
    or climbs with ``..``.  Names are resolved through the module's imports, so words inside
    identifiers, strings or comments and attributes of other objects never match.

    Returns:
        (path, line, message) per finding, in source order.

    Raises:
        CompilationError: ``source`` is not valid Python.
    """
    try:
        tree = ast.parse(source, path)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", 0) or 0
        raise CompilationError(f"{path}:{line}: {exc}", errors=[(path, line, str(exc))], output="") from None
    nodes = list(ast.walk(tree))  # one walk shared by every pass: scanning is on the compile path
    scanner = _Scanner(path, _import_aliases(nodes), _bound_names(nodes))
    for node in nodes:
        scanner.check(node)
    return sorted(scanner.findings, key=lambda f: f[1])


class _Scanner:
    def __init__(self, path: str, aliases: dict[str, str], bound: set[str]) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.aliases = aliases
        self.bound = bound

    def report(self, node: ast.stmt | ast.expr, message: str) -> None:
        self.findings.append((self.path, node.lineno, message))

    def check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.check_module(node, alias.name, "imports")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:  # relative imports are the sandbox's own modules
                self.check_module(node, node.module, "imports")
        elif isinstance(node, ast.Call):
            name = self.resolve(node.func)
            if name is not None:
                self.check_call(node, name)
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call):
                self.check_path_method(node, node.func.attr, node.func.value)

    def resolve(self, expr: ast.expr) -> str | None:
        """The dotted name ``expr`` stands for (``builtins.eval``, ``os.system``), if known."""
        if isinstance(expr, ast.Name):
            if expr.id in self.aliases:
                return self.aliases[expr.id] or None
            return f"builtins.{expr.id}" if expr.id in _SHADOWABLE and expr.id not in self.bound else None
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    def check_module(self, node: ast.stmt | ast.expr, module: str, verb: str) -> None:
        reason = _BANNED_MODULES.get(module.split(".")[0])
        if reason:
            self.report(node, f"{verb} {module!r}, which {reason}")

    def check_call(self, node: ast.Call, name: str) -> None:
        owner, _, function = name.rpartition(".")
        if owner == "builtins" and function in _CODE_BUILTINS:
            self.report(node, f"calls {function}(), which runs code built at run time")
        elif owner in _OS_MODULES and _OS_CALLS.fullmatch(function):
            self.report(node, f"calls {name}(), which starts a process or a shell command")
        elif name == "importlib.import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self.check_module(node, node.args[0].value, "imports (through importlib.import_module)")
        elif name in _OPENERS and _writes(_argument(node, 1, "mode")):
            self.check_target(node, _argument(node, 0, "file"))

    def check_path_method(self, node: ast.Call, method: str, receiver: ast.Call) -> None:
        if self.resolve(receiver.func) not in _PATH_CLASSES or not receiver.args:
            return
        if method in ("write_text", "write_bytes") or (method == "open" and _writes(_argument(node, 0, "mode"))):
            self.check_target(node, receiver.args[0])

    def check_target(self, node: ast.Call, target: ast.expr | None) -> None:
        text = _outside_text(target)
        if text is not None:
            self.report(node, f"opens {text!r} for writing, outside the sandbox folder")


def _import_aliases(nodes: Iterable[ast.AST]) -> dict[str, str]:
    """Local name -> dotted name it is bound to by the module's imports ('' for its own modules)."""
    aliases: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]  # ``import a.b`` binds ``a``; ``import a.b as c`` binds a.b
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                own = node.level > 0 or not node.module
                aliases[alias.asname or alias.name] = "" if own else f"{node.module}.{alias.name}"
    return aliases


def _bound_names(nodes: Iterable[ast.AST]) -> set[str]:
    """Names the module binds itself (assignments, defs, parameters): they shadow builtins."""
    bound: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(node.args) > position and not isinstance(node.args[position], ast.Starred):
        return node.args[position]
    return next((k.value for k in node.keywords if k.arg == keyword), None)


def _writes(mode: ast.expr | None) -> bool:
    # Only literal modes: a computed one is unknown, and guessing would mean false positives.
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))


def _outside_text(target: ast.expr | None) -> str | None:
    """The literal text of a path that is absolute or climbs out with ``..``, else None."""
    if target is None:
        return None
    pieces = [n.value for n in ast.walk(target) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    leading = _leading_text(target)
    if leading.startswith(("/", "~", "\\")) or any(_PARENT_STEP.search(p) for p in pieces):
        return ast.unparse(target)
    return None


def _leading_text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _leading_text(node.left)
    return ""
