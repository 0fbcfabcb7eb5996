"""The AST security scan of sandbox code: what the security profiles forbid, found without running it.

:func:`scan_source` reads one module's AST; :mod:`plugin_host.compiler` runs it on every module
it compiles (``restricted`` turns findings into a :class:`~plugin_host.errors.SecurityViolationError`,
``standard`` into warnings, ``permissive`` skips the scan).  ``restricted`` scans with
``strict=True``, which adds the dynamic forms (names computed at run time, references to dangerous
callables, writes to paths the scan cannot read); ``standard`` warns about the plain forms only.

The static scan is defence in depth, not a security boundary: code can always reach a
forbidden function in ways no static scan sees (a module passed to a function that calls
``getattr`` on its parameter); the runtime audit is what refuses the operation.
"""

from __future__ import annotations

import ast
import re
from typing import Callable, Iterable

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
_SHADOWABLE = frozenset(_CODE_BUILTINS + ("open", "getattr", "vars", "globals", "locals"))
_OPENERS = ("builtins.open", "io.open")
_PATH_CLASSES = ("pathlib.Path", "pathlib.PosixPath", "pathlib.PurePath", "pathlib.PurePosixPath")
_PATH_CLASS_NAMES = frozenset(name.rpartition(".")[2] for name in _PATH_CLASSES)
_PARENT_STEP = re.compile(r"(^|[/\\])\.\.([/\\]|$)")

# -- strict (``restricted``) only ----------------------------------------------------------

_STRICT_MODULES = {
    "builtins": "reaches every builtin by name",
    "asyncio.subprocess": "starts processes",
    "concurrent.futures.process": "starts processes",
    "webbrowser": "starts processes",
    "urllib.request": "opens network connections",
    "http.client": "opens network connections",
    "http.server": "opens network connections",
    "socketserver": "opens network connections",
    "ftplib": "opens network connections",
    "smtplib": "opens network connections",
    "poplib": "opens network connections",
    "imaplib": "opens network connections",
    "nntplib": "opens network connections",
    "telnetlib": "opens network connections",
    "xmlrpc.client": "opens network connections",
    "xmlrpc.server": "opens network connections",
}
"""Modules refused under ``restricted`` (a module and everything under it), with what they do."""
_STRICT_CALLABLES = {
    "asyncio.create_subprocess_exec": "starts processes",
    "asyncio.create_subprocess_shell": "starts processes",
    "asyncio.open_connection": "opens network connections",
    "asyncio.open_unix_connection": "opens network connections",
    "asyncio.start_server": "opens network connections",
    "asyncio.start_unix_server": "opens network connections",
    "concurrent.futures.ProcessPoolExecutor": "starts processes",
    "importlib.__import__": "runs code built at run time",
    "sys.modules": "reaches any loaded module by name",
}
"""Functions (and objects) refused under ``restricted`` wherever they are named."""
_STRICT_METHODS = {
    "subprocess_exec": "starts processes",
    "subprocess_shell": "starts processes",
    "create_connection": "opens network connections",
    "create_server": "opens network connections",
    "create_datagram_endpoint": "opens network connections",
    "sock_connect": "opens network connections",
}
"""Event-loop methods refused under ``restricted`` on any object (the loop is not known statically)."""
_POSIX_SPAWN = re.compile(r"posix_spawnp?")
_NAMESPACE_DUNDERS = ("__dict__", "__builtins__")
_MUTATORS = frozenset({"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"})
_RUNTIME_PACKAGES = ("actors", "plugin_host")
_STRICT_OPENERS = (*_OPENERS, "io.FileIO", "_io.FileIO", "codecs.open")
"""Callables opening a path as ``(file, mode)``: the strict scan judges every one of them."""
_OS_PATH_WRITERS: dict[str, tuple[tuple[int, str], ...]] = {
    **{
        f: ((0, "path"),)
        for f in ("remove", "unlink", "rmdir", "mkdir", "truncate", "chmod", "lchmod", "mkfifo", "mknod")
    },
    **{f: ((0, "path"),) for f in ("chown", "lchown", "chflags", "lchflags", "utime", "setxattr", "removexattr")},
    **{f: ((0, "src"), (1, "dst")) for f in ("rename", "replace")},
    **{f: ((1, "dst"),) for f in ("symlink", "link")},
}
"""The file-system changes of ``os`` that ``posix`` (its C half) has too, under the same names."""
_PATH_WRITERS: dict[str, tuple[tuple[int, str], ...]] = {
    **{f"{owner}.{f}": where for owner in _OS_MODULES for f, where in _OS_PATH_WRITERS.items()},
    "os.makedirs": ((0, "name"),),
    "os.removedirs": ((0, "name"),),
    "os.renames": ((0, "old"), (1, "new")),
    "shutil.chown": ((0, "path"),),
    **{f"shutil.{f}": ((1, "dst"),) for f in ("copy", "copy2", "copyfile", "copytree", "copymode", "copystat")},
    "shutil.move": ((0, "src"), (1, "dst")),
    "shutil.rmtree": ((0, "path"),),
}
"""Functions that change the file system under ``restricted``: (position, keyword) of each path they change."""
_CHECKED_ARGUMENTS = frozenset(
    {
        *_STRICT_OPENERS,
        *_PATH_WRITERS,
        "os.open",
        "posix.open",
        "importlib.import_module",
        "builtins.getattr",
        "builtins.vars",
        "builtins.__import__",
    }
)
"""Callables whose calls the strict scan judges by their arguments, so a bare reference (or arguments it
cannot read, ``*args``/``**kwargs``) is refused."""
_REBASED = frozenset(
    {"os", "posix", "sys", "builtins", "importlib", "shutil", "subprocess", "socket", "ctypes", "pty", "io", "codecs"}
)
"""Modules that other modules hold as an attribute (``shutil.os``, ``os.path.os``, ``os.sys``): reached that
way, they are judged as themselves."""
_LOOKUP_METHODS = ("__getattribute__", "__getattr__")
_INTROSPECTION = frozenset(
    {
        "__globals__",
        "__builtins__",
        "__subclasses__",
        "f_globals",
        "f_builtins",
        "f_locals",
        "f_back",
        "tb_frame",
        "gi_frame",
        "cr_frame",
        "ag_frame",
    }
)
"""Attributes that reach another namespace (a function's globals, a frame's, every class) on any object."""
_READ_ONLY_FLAGS = frozenset({"O_RDONLY", "O_CLOEXEC", "O_NOFOLLOW", "O_DIRECTORY", "O_NONBLOCK", "O_NOCTTY"})
_PATH_WRITE_METHODS = ("write_text", "write_bytes")
_PATH_CHANGE_METHODS = ("unlink", "touch", "mkdir", "rmdir", "chmod", "lchmod", "symlink_to", "hardlink_to")
"""Strict: methods that change the file system at their receiver's path, judged on any object."""
_PATH_MOVE_METHODS = ("rename", "replace")
"""Strict: ``Path`` methods whose names other objects use too (``str.replace``): judged on known paths only."""
_MODE = re.compile(r"[rwxabtU+]+")


def scan_source(source: str, path: str, *, strict: bool = False) -> list[Finding]:
    """Scan one module's AST for what the security profiles forbid; no code runs.

    Finds imports of process, network and native-code modules (``subprocess``, ``socket``,
    ``ctypes``, ``multiprocessing`` and their private twins), calls of ``os.system``,
    ``os.popen``, ``os.exec*``, ``os.spawn*`` and ``os.fork`` (under any alias), calls of the
    builtins ``eval``, ``exec``, ``compile`` and ``__import__`` (unless the module defines its
    own), ``importlib.import_module`` of a forbidden module, and ``open`` (or ``io.open``,
    ``pathlib.Path(...).open/write_text/write_bytes``) for writing a literal path that is absolute
    or climbs with ``..``.  Names are resolved through the module's imports, so words inside
    identifiers, strings or comments and attributes of other objects never match.

    With ``strict`` (the ``restricted`` profile) it also finds the dynamic forms:
    ``importlib.import_module`` of a computed name; ``getattr`` with a computed name on anything
    bound by an import; ``builtins``, ``__builtins__``, ``sys.modules`` and a module's ``__dict__``;
    changes to ``globals()``/``vars()``/``locals()``; a dangerous or argument-checked callable
    named without being called (``system = os.system``); ``os.posix_spawn*``, asyncio's
    process and network functions, ``ProcessPoolExecutor``, the network client and server modules
    (``urllib.request`` ...); private modules of ``actors`` and ``plugin_host``; and every write
    to the file system (``open`` in a mode that may write, ``os.open`` with flags that may write,
    ``.write_text``/``.write_bytes``/``.open`` on any object, ``os.remove``/``rename``/``mkdir``...,
    ``shutil`` copies, moves and ``rmtree``) whose path is not a literal relative path inside
    the sandbox folder.

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
    except RecursionError:
        raise _too_deep(path) from None
    try:
        return _scan(tree, path, strict)
    except RecursionError:  # valid Python nested past what a recursive reading of its AST can follow
        raise _too_deep(path) from None


def _scan(tree: ast.Module, path: str, strict: bool) -> list[Finding]:
    nodes = list(ast.walk(tree))  # one walk shared by every pass: scanning is on the compile path
    parents = {child: node for node in nodes for child in ast.iter_child_nodes(node)}
    scanner = _Scanner(path, _import_aliases(nodes), _Scopes(nodes, parents))
    for node in nodes:
        scanner.check(node)
    if strict:
        strict_scanner = _StrictScanner(scanner, nodes, parents)
        for node in nodes:
            strict_scanner.check(node)
    return sorted(scanner.findings, key=lambda f: f[1])


def _too_deep(path: str) -> CompilationError:
    message = "an expression is nested too deeply to scan"
    return CompilationError(f"{path}:0: {message}", errors=[(path, 0, message)], output="")


class _Scanner:
    def __init__(self, path: str, aliases: dict[str, str], scopes: _Scopes) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.aliases = aliases
        self.scopes = scopes

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
            return f"builtins.{expr.id}" if expr.id in _SHADOWABLE and not self.scopes.binds(expr) else None
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    def check_module(self, node: ast.stmt | ast.expr, module: str, verb: str) -> None:
        reason = _BANNED_MODULES.get(module.split(".")[0])
        if reason:
            self.report(node, f"{verb} {module!r}, which {reason}")

    def check_call(self, node: ast.Call, name: str) -> None:
        reason = _plain_danger(name)
        if reason:
            self.report(node, f"calls {_shown(name)}(), which {reason}")
        elif name == "importlib.import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self.check_module(node, node.args[0].value, "imports (through importlib.import_module)")
        elif name in _OPENERS and _writes(_argument(node, 1, "mode")):
            self.check_target(node, _argument(node, 0, "file"))

    def check_path_method(self, node: ast.Call, method: str, receiver: ast.Call) -> None:
        if self.resolve(receiver.func) not in _PATH_CLASSES or not receiver.args:
            return
        if method in _PATH_WRITE_METHODS or (method == "open" and _writes(_argument(node, 0, "mode"))):
            self.check_target(node, receiver.args[0])

    def check_target(self, node: ast.Call, target: ast.expr | None) -> None:
        text = _outside_text(target)
        if text is not None:
            self.report(node, f"opens {text!r} for writing, outside the sandbox folder")


class _StrictScanner:
    """The dynamic forms ``restricted`` refuses on top of :class:`_Scanner`'s (which it reports into)."""

    def __init__(self, base: _Scanner, nodes: list[ast.AST], parents: dict[ast.AST, ast.AST]) -> None:
        self.base = base
        self.parents = parents
        self.refused = {m for node in nodes for m in _imported_modules(node) if _strict_module(m)}
        self.paths = _path_names(nodes, base.resolve)

    def report(self, node: ast.stmt | ast.expr, message: str) -> None:
        self.base.report(node, message)

    def check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.check_module(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                self.check_module(node, node.module)
                if _strict_module(node.module) is None:  # else refused whole just above
                    for alias in node.names:
                        self.check_module(node, f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Call):
            self.check_call(node)
        if isinstance(node, ast.Attribute) and node.attr in _INTROSPECTION:
            self.report(node, f"uses .{node.attr}, which reaches another namespace by introspection")
        elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            self.check_reference(node)

    def check_module(self, node: ast.stmt | ast.expr, module: str) -> None:
        reason = _strict_module(module)
        if reason:
            self.report(node, f"imports {module!r}, which {reason}")

    def check_call(self, node: ast.Call) -> None:
        name = self.base.resolve(node.func)
        if isinstance(node.func, ast.Attribute) and node.func.attr in _STRICT_METHODS and name is None:
            self.report(node, f"calls .{node.func.attr}(), which {_STRICT_METHODS[node.func.attr]}")
        if isinstance(node.func, ast.Attribute) and node.func.attr in _LOOKUP_METHODS:
            self.check_method_lookup(node, node.func)
        self.check_write(node, name)
        if name is None:
            return
        reason = self.danger(name, node.func) or self.indirect(name, node.func)
        if reason:
            self.report(node, f"calls {_shown(name)}(), which {reason}")
        elif name in _CHECKED_ARGUMENTS and _unreadable_arguments(node):
            self.report(node, f"calls {_shown(name)}() with arguments the scan cannot read (*args, **kwargs)")
        elif name == "importlib.import_module":
            self.check_import_module(node, _argument(node, 0, "name"))
        elif name == "builtins.getattr":
            self.check_lookup(node, _argument(node, 0, "o"), _argument(node, 1, "name"), "getattr")
        elif name in ("builtins.globals", "builtins.vars", "builtins.locals"):
            self.check_namespace_call(node, name.rpartition(".")[2])

    def check_import_module(self, node: ast.Call, module: ast.expr | None) -> None:
        if isinstance(module, ast.Constant) and isinstance(module.value, str):
            self.check_module(node, module.value)
        else:
            self.report(node, "calls importlib.import_module() with a module name computed at run time")

    def check_method_lookup(self, node: ast.Call, func: ast.Attribute) -> None:
        """``os.__getattribute__('system')``, and ``object.__getattribute__(os, 'system')``."""
        if self.base.resolve(func.value) is not None:
            self.check_lookup(node, func.value, _argument(node, 0, "name"), func.attr)
        else:
            self.check_lookup(node, _argument(node, 0, "o"), _argument(node, 1, "name"), func.attr)

    def check_lookup(self, node: ast.Call, owner: ast.expr | None, attribute: ast.expr | None, function: str) -> None:
        """An attribute looked up by name on what an import (or a builtin) binds: judged as if written out."""
        owner_name = self.base.resolve(owner) if owner is not None else None
        if owner is None or owner_name is None:
            return
        if not (isinstance(attribute, ast.Constant) and isinstance(attribute.value, str)):
            self.report(node, f"calls {function}() on {owner_name!r} with an attribute name computed at run time")
            return
        name = f"{owner_name}.{attribute.value}"
        reason = self.danger(name, owner) or _plain_danger(name) or self.indirect(name, owner)
        if reason:
            self.report(node, f"calls {function}() for {_shown(name)}, which {reason}")

    def check_namespace_call(self, node: ast.Call, function: str) -> None:
        module = self.base.resolve(node.args[0]) if function == "vars" and node.args else None
        if module is not None:
            self.report(node, f"calls vars() on {module!r}, which reaches it by name")
            return
        parent = self.parents.get(node)
        stored = isinstance(parent, ast.Subscript) and isinstance(parent.ctx, (ast.Store, ast.Del))
        mutated = isinstance(parent, ast.Attribute) and parent.attr in _MUTATORS
        if stored or mutated:
            self.report(node, f"changes the namespace {function}() returns")
            return
        key = _namespace_key(parent, self.parents.get(parent) if parent is not None else None)
        if key is not None and not (
            isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value not in _NAMESPACE_DUNDERS
        ):
            self.report(node, f"reads the namespace {function}() returns by a name the scan cannot judge")

    def check_reference(self, node: ast.Name | ast.Attribute) -> None:
        """A dangerous name used as a value: it counts as a call (``system = os.system``)."""
        parent = self.parents.get(node)
        if isinstance(parent, ast.Attribute) or (isinstance(parent, ast.Call) and parent.func is node):
            return  # the longer name, or the call, is judged instead
        if isinstance(node, ast.Name) and node.id == "__builtins__" and not self.base.scopes.binds(node):
            self.report(node, "uses __builtins__, which reaches every builtin by name")
            return
        name = self.base.resolve(node)
        if name is None:
            return
        reason = self.danger(name, node) or _plain_danger(name) or self.indirect(name, node)
        if reason is None and name in _CHECKED_ARGUMENTS:
            reason = "is judged by its arguments, so only direct calls pass"
        if reason:
            self.report(node, f"refers to {_shown(name)} without calling it (a reference counts as a use; it {reason})")

    def danger(self, name: str, node: ast.expr) -> str | None:
        """Why the strict scan refuses ``name`` (what ``node`` stands for) wherever it is called or named."""
        owner, _, function = name.rpartition(".")
        if owner in _OS_MODULES and _POSIX_SPAWN.fullmatch(function):
            return "starts a process"
        if function in _NAMESPACE_DUNDERS:
            return "reaches a module's names by string"
        if name in _STRICT_CALLABLES:
            return _STRICT_CALLABLES[name]
        if not _imported(node, self.base.aliases) or any(_within(name, m) for m in self.refused):
            return None  # a builtin (``open`` is not ``builtins``' module), or its import is refused already
        return _strict_module(name)

    def indirect(self, name: str, node: ast.expr) -> str | None:
        """Why ``name`` is refused through something dangerous it starts with (``os.system.__call__``), or
        through a module reached as another's attribute (``shutil.os.system`` is ``os.system``)."""
        parts = name.split(".")
        canonical = _canonical(name)
        candidates = [".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)]
        if canonical != name:
            top = canonical.split(".")[0]
            if top in _BANNED_MODULES and top not in self.base.aliases.values():  # else its import is refused
                return _BANNED_MODULES[top]
            pieces = canonical.split(".")
            candidates += [".".join(pieces[:end]) for end in range(len(pieces), 0, -1)]
        for candidate in candidates:
            reason = self.danger(candidate, node) or _plain_danger(candidate)
            if reason is None and candidate in _CHECKED_ARGUMENTS:
                reason = "is judged by its arguments, so only direct calls pass"
            if reason:
                return reason
        return None

    def check_write(self, node: ast.Call, name: str | None) -> None:
        """Any file-system change whose path is not a literal relative path inside the folder."""
        if name in _STRICT_OPENERS:
            mode, target = _argument(node, 1, "mode"), _argument(node, 0, "file")
            if _may_write(node, mode):
                plain = name in _OPENERS and _writes(mode) and _outside_text(target) is not None
                self.check_written(node, target, name, reported=plain)
        elif name in ("os.open", "posix.open"):
            if _flags_may_write(_argument(node, 1, "flags")):
                self.check_written(node, _argument(node, 0, "path"), name)
        elif name in _PATH_WRITERS:
            for position, keyword in _PATH_WRITERS[name]:
                self.check_written(node, _argument(node, position, keyword), name)
        elif isinstance(node.func, ast.Attribute) and name is None:
            self.check_method_write(node, node.func)

    def check_method_write(self, node: ast.Call, func: ast.Attribute) -> None:
        mode = _argument(node, 0, "mode")
        if isinstance(mode, ast.Constant) and not (isinstance(mode.value, str) and _MODE.fullmatch(mode.value)):
            mode = None  # not a mode: another object's ``open(name)`` (zipfile, tarfile ...)
        receiver = func.value
        path_call = isinstance(receiver, ast.Call) and self.base.resolve(receiver.func) in _PATH_CLASSES
        known_path = path_call or (isinstance(receiver, ast.Name) and receiver.id in self.paths)
        if func.attr in _PATH_MOVE_METHODS and known_path:
            self.check_written(node, _argument(node, 0, "target"), f".{func.attr}")
        elif func.attr not in _PATH_WRITE_METHODS + _PATH_CHANGE_METHODS and not (
            func.attr == "open" and _may_write(node, mode, optional=True)
        ):
            return
        if isinstance(receiver, ast.Call) and path_call:
            plain = func.attr in _PATH_WRITE_METHODS or (func.attr == "open" and _writes(mode))
            first = receiver.args[0] if receiver.args else None
            reported = plain and _outside_text(first) is not None
        elif isinstance(receiver, ast.BinOp) and _literal_text(receiver) is not None:
            reported = False  # ``Path("data") / "out.txt"``
        else:
            message = f"calls .{func.attr}() on a path the scan cannot read, which may write outside the folder"
            self.report(node, message)
            return
        self.check_written(node, receiver, f".{func.attr}", reported=reported)

    def check_written(self, node: ast.Call, target: ast.expr | None, name: str, *, reported: bool = False) -> None:
        """``reported``: the plain scan already refused this target as outside the folder."""
        text, shown = _literal_text(target), _shown(name)
        if text is None:
            self.report(node, f"writes with {shown}() to a path computed at run time, which may be outside the folder")
        elif not reported and _leaves_folder(text):
            self.report(node, f"writes with {shown}() to {text!r}, outside the sandbox folder")


def _canonical(name: str) -> str:
    """``name`` from the last module it reaches as another module's attribute (``shutil.os.system``:
    ``os.system``), else ``name``."""
    parts = name.split(".")
    for index in range(len(parts) - 1, 0, -1):
        if parts[index] in _REBASED:
            return ".".join(parts[index:])
    return name


def _unreadable_arguments(node: ast.Call) -> bool:
    """Whether a call passes ``*args`` or ``**kwargs``, which the scan cannot read."""
    return any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)


def _namespace_key(parent: ast.AST | None, grandparent: ast.AST | None) -> ast.expr | None:
    """The key a namespace dict is read with (``globals()[key]``, ``vars().get(key)``), if it is read."""
    if isinstance(parent, ast.Subscript):
        return parent.slice
    if isinstance(parent, ast.Attribute) and parent.attr in ("get", "__getitem__"):
        if isinstance(grandparent, ast.Call):
            return grandparent.args[0] if grandparent.args else ast.Name("?", ast.Load())
    return None


def _path_names(nodes: Iterable[ast.AST], resolve: Callable[[ast.expr], str | None]) -> set[str]:
    """Names the module assigns a ``Path`` to (``p = Path(x)``, ``p = Path(x) / "y"``)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        while isinstance(value, ast.BinOp) and isinstance(value.op, ast.Div):
            value = value.left
        if isinstance(value, ast.Call) and resolve(value.func) in _PATH_CLASSES:
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _imported(node: ast.expr, aliases: dict[str, str]) -> bool:
    """Whether the leftmost name of ``node`` is bound by an import of another package."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and bool(aliases.get(node.id))


def _imported_modules(node: ast.AST) -> list[str]:
    """The modules an import statement names (for ``from m import n``: ``m`` and ``m.n``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _shown(name: str) -> str:
    """``name`` as the plugin wrote it: builtins without their module."""
    return name.removeprefix("builtins.")


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _plain_danger(name: str) -> str | None:
    """What the plain scan refuses ``name`` for when it is called (None: nothing)."""
    owner, _, function = name.rpartition(".")
    if owner == "builtins" and function in _CODE_BUILTINS:
        return "runs code built at run time"
    if owner in _OS_MODULES and _OS_CALLS.fullmatch(function):
        return "starts a process or a shell command"
    return None


def _strict_module(module: str) -> str | None:
    """Why ``restricted`` refuses ``module`` and everything under it (None: it does not)."""
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        reason = _STRICT_MODULES.get(".".join(parts[:end]))
        if reason:
            return reason
    private = any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts[1:])
    if parts[0] in _RUNTIME_PACKAGES and private:
        return "is private to the host runtime"
    return None


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


_SCOPE_NODES = (
    ast.Module,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


class _Scopes:
    """Which names each scope binds itself (assignments, defs, parameters), so a builtin is shadowed
    only where Python would look the name up there: ``(lambda exec: 0)`` leaves ``exec`` elsewhere
    the builtin."""

    def __init__(self, nodes: list[ast.AST], parents: dict[ast.AST, ast.AST]) -> None:
        self.parents = parents
        self.module = nodes[0]  # ast.walk starts at the module
        self.bound: dict[ast.AST, set[str]] = {}
        for node in nodes:
            for name, scope in self._bindings(node):
                self.bound.setdefault(scope, set()).add(name)

    def _bindings(self, node: ast.AST) -> Iterable[tuple[str, ast.AST]]:
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            yield node.id, self.scope_of(node)
        elif isinstance(node, ast.arg):
            yield node.arg, self.scope_of(node)  # the function or lambda the parameter belongs to
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, self.scope_of(node)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            yield node.name, self.scope_of(node)
        elif isinstance(node, ast.Global):
            yield from ((name, self.module) for name in node.names)

    def scope_of(self, node: ast.AST) -> ast.AST:
        """The nearest scope enclosing ``node`` (not ``node`` itself)."""
        parent = self.parents.get(node)
        while parent is not None and not isinstance(parent, _SCOPE_NODES):
            parent = self.parents.get(parent)
        return parent if parent is not None else node

    def binds(self, name: ast.Name) -> bool:
        """Whether ``name`` refers to a binding of the module's own code (else a builtin or global)."""
        scope: ast.AST | None = self.scope_of(name)
        first = True
        while scope is not None:
            # A class body's names are not seen from the functions inside it.
            if name.id in self.bound.get(scope, ()) and (first or not isinstance(scope, ast.ClassDef)):
                return True
            first = False
            scope = self.scope_of(scope) if not isinstance(scope, ast.Module) else None
        return False


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(node.args) > position and not isinstance(node.args[position], ast.Starred):
        return node.args[position]
    return next((k.value for k in node.keywords if k.arg == keyword), None)


def _writes(mode: ast.expr | None) -> bool:
    # Only literal modes: a computed one is unknown, and guessing would mean false positives.
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))


def _may_write(node: ast.Call, mode: ast.expr | None, *, optional: bool = False) -> bool:
    """Strict: a mode that writes, or one the scan cannot read (computed, ``*args``, ``**kwargs``).

    ``optional``: a method whose absent mode means reading (``Path.open()``); a computed mode of an
    arbitrary object's ``.open`` is not judged (``zipfile``, ``tarfile`` ... have their own).
    """
    unreadable = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
    if mode is None:
        return unreadable and not optional
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return _writes(mode)
    return not optional


def _flags_may_write(flags: ast.expr | None) -> bool:
    """Strict: ``os.open`` flags other than ``O_RDONLY`` combined with read-only modifiers."""
    if flags is None:
        return True
    if isinstance(flags, ast.BinOp) and isinstance(flags.op, ast.BitOr):
        return _flags_may_write(flags.left) or _flags_may_write(flags.right)
    if isinstance(flags, ast.Constant):
        return flags.value != 0
    if isinstance(flags, ast.Attribute):  # ``os.O_RDONLY`` under any alias of the module: its name decides
        return flags.attr not in _READ_ONLY_FLAGS
    if isinstance(flags, ast.Name):
        return flags.id not in _READ_ONLY_FLAGS
    return True


def _literal_text(target: ast.expr | None) -> str | None:
    """The text of a path written as literals (a string, ``Path("a", "b")``, ``Path("a") / "b"``), else None."""
    if isinstance(target, ast.Constant) and isinstance(target.value, str):
        return target.value
    if isinstance(target, ast.BinOp) and isinstance(target.op, ast.Div):
        left, right = _literal_text(target.left), _literal_text(target.right)
        return f"{left}/{right}" if left is not None and right is not None else None
    if isinstance(target, ast.Call) and isinstance(target.func, (ast.Name, ast.Attribute)) and not target.keywords:
        called = target.func.id if isinstance(target.func, ast.Name) else target.func.attr
        pieces = [_literal_text(a) for a in target.args]
        if called in _PATH_CLASS_NAMES and pieces and None not in pieces:
            return "/".join(p for p in pieces if p is not None)
    return None


def _outside_text(target: ast.expr | None) -> str | None:
    """The literal text of a path that is absolute or climbs out with ``..``, else None."""
    if target is None:
        return None
    pieces = [n.value for n in ast.walk(target) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    if _leaves_folder(_leading_text(target)) or any(_PARENT_STEP.search(p) for p in pieces):
        return ast.unparse(target)
    return None


def _leaves_folder(text: str) -> bool:
    """Whether a path's literal text is absolute or climbs out with ``..`` (``~`` is a folder name to
    ``open``: only ``expanduser``, a call the strict scan cannot read, makes it the home folder)."""
    return text.startswith(("/", "\\")) or _PARENT_STEP.search(text) is not None


def _leading_text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _leading_text(node.left)
    return ""
