"""``plugin_host.errors``: one base, builtin refinements, structured context that survives pickling."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest

from plugin_host import _wire, errors
from plugin_host.errors import (
    CompilationError,
    HostStartError,
    PluginError,
    PluginHostError,
    PluginHostWarning,
    SandboxNotFoundError,
    SandboxStartError,
)
from plugin_host.messages import Failed

ERROR_NAMES = [n for n in errors.__all__ if n != "PluginHostWarning"]
ERROR_CLASSES = [getattr(errors, n) for n in ERROR_NAMES]

PICKLE_CASES = [pytest.param(cls, id=cls.__name__) for cls in ERROR_CLASSES]
PROTOCOLS = sorted({0, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL})

# Every class a caller may name in an ``except`` to catch one of our errors, besides the base: the
# builtins we refine (STYLE rule 5) and our own families (the README's ``compile_*`` raise
# ``CompilationError`` and its refinements; ``Host()`` raises ``HostStartError`` and its refinements).
CATCH_CLASSES = (
    LookupError,
    TimeoutError,
    ValueError,
    RuntimeError,
    PermissionError,
    HostStartError,
    SandboxStartError,
    CompilationError,
)

# For each error, exactly which of CATCH_CLASSES catch it (besides PluginHostError and Exception).
# A new class must be added here, so someone decides what it refines.
CAUGHT_BY: dict[str, set[type]] = {
    "PluginHostError": set(),
    "ConfigError": {ValueError},
    "HostStartError": {RuntimeError, HostStartError},
    "StateDirInUseError": {RuntimeError, HostStartError},
    "CredentialError": {RuntimeError, HostStartError},
    "AccessDeniedError": {PermissionError},
    "HostClosedError": {RuntimeError},
    "BadRequestError": {ValueError},
    "SandboxNotFoundError": {LookupError},
    "SandboxExistsError": {ValueError},
    "SandboxStartError": {RuntimeError, SandboxStartError},
    "InvalidSpecError": {RuntimeError, SandboxStartError, ValueError},
    "CodeIntegrityError": {RuntimeError, SandboxStartError, ValueError},
    "ActorNotFoundError": {LookupError},
    "CallTimeoutError": {TimeoutError},
    "RunTimeoutError": {TimeoutError},
    "PluginError": {RuntimeError},
    "LimitExceededError": {RuntimeError},
    "OverloadedError": {RuntimeError},
    "CompilationError": {ValueError, CompilationError},
    "CompilationTimeoutError": {ValueError, CompilationError, TimeoutError},
    "SecurityViolationError": {ValueError, CompilationError},
    "HotReloadError": {RuntimeError},
    "UnknownModuleError": {LookupError},
    "VersionNotFoundError": {LookupError},
    "NoCapableNodeError": {LookupError},
    "DependencyError": {RuntimeError},
}


def builtin_implied_by(name: str) -> type | None:
    """The builtin an error's name promises (STYLE rule 5), or None when the name promises none."""
    if "Timeout" in name:
        return TimeoutError
    if "NotFound" in name or name.startswith("Unknown"):
        return LookupError
    return None


NAMED_REFINEMENTS = [
    (cls, builtin_implied_by(cls.__name__)) for cls in ERROR_CLASSES if builtin_implied_by(cls.__name__) is not None
]


def test_errors_all_lists_every_exception_class_of_the_module() -> None:
    """No exception class defined in ``plugin_host.errors`` is left out of its ``__all__``."""
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


def test_the_hierarchy_table_names_every_error() -> None:
    """Each error of ``__all__`` has its row in ``CAUGHT_BY`` (so the exact-hierarchy test covers it)."""
    assert set(CAUGHT_BY) == set(ERROR_NAMES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_every_error_derives_from_plugin_host_error_and_exception(cls: type) -> None:
    """Callers can catch any of our errors as ``PluginHostError`` or ``Exception``."""
    assert issubclass(cls, PluginHostError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_every_error_name_ends_in_error(cls: type) -> None:
    """Error class names end in ``Error``."""
    assert cls.__name__.endswith("Error")


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_every_error_is_caught_by_exactly_the_builtins_and_families_it_promises(cls: type) -> None:
    """An ``except`` on each class of its ``CAUGHT_BY`` row catches the error, and no other one does.

    Exact both ways: losing a builtin base breaks callers' ``except``, and gaining one (a
    ``LookupError`` that is also a ``ValueError``) makes their handlers catch what they did not mean to.
    """
    caught_by = {catcher for catcher in CATCH_CLASSES if issubclass(cls, catcher)}
    assert caught_by == CAUGHT_BY[cls.__name__]


@pytest.mark.parametrize(("cls", "builtin"), NAMED_REFINEMENTS, ids=[cls.__name__ for cls, _ in NAMED_REFINEMENTS])
def test_an_error_whose_name_says_notfound_unknown_or_timeout_refines_that_builtin(cls: type, builtin: type) -> None:
    """The naming rule, for every class including ones added later: NotFound/Unknown are
    ``LookupError``, Timeout is ``TimeoutError``."""
    assert issubclass(cls, builtin)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_only_errors_named_timeout_are_timeout_errors(cls: type) -> None:
    """A caller's ``except TimeoutError`` (retry later) catches exactly the errors whose name says Timeout."""
    assert issubclass(cls, TimeoutError) == ("Timeout" in cls.__name__)


def test_warning_base_is_a_user_warning_not_an_error() -> None:
    """``PluginHostWarning`` is a ``UserWarning`` and not part of the error hierarchy."""
    assert issubclass(PluginHostWarning, UserWarning)
    assert not issubclass(PluginHostWarning, PluginHostError)


@pytest.mark.parametrize("cls", PICKLE_CASES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_error_pickles_with_message_and_context(cls: type, protocol: int) -> None:
    """An instance of each class survives pickling with its message, context attributes and type."""
    error = cls("went wrong", sandbox_id="s1", detail={"k": [1, 2]})
    restored = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(restored) is cls
    assert str(restored) == "went wrong"
    assert restored.message == "went wrong"
    assert restored.sandbox_id == "s1"
    assert restored.detail == {"k": [1, 2]}
    assert restored.args == error.args


@pytest.mark.parametrize("cls", PICKLE_CASES)
def test_every_error_a_sandbox_sends_in_a_failed_reply_reaches_the_host_whole(cls: type) -> None:
    """``Failed(error)`` from a sandbox passes the host's restricted decoder as the same class with
    its message and context (errors cross as ``errors._rebuild``, the one constructor allowed)."""
    keys = _wire.Keyring(_wire.host_key_from_cookie(b"a test credential of 32 bytes...."))
    sandbox = _wire.new_sandbox_principal("alice")
    error = cls("went wrong", sandbox_id="alice", detail={"k": (1, 2)})
    frame = keys.seal(sandbox.kid, pickle.dumps(("sender", Failed(error, "c1")))).partition(b">")[2]
    principal, (_, reply) = keys.decode(frame)
    assert principal == sandbox
    assert type(reply.error) is cls
    assert (str(reply.error), reply.error.sandbox_id, reply.error.detail, reply.corr) == (
        "went wrong",
        "alice",
        {"k": (1, 2)},
        "c1",
    )


@pytest.mark.parametrize("cls", PICKLE_CASES)
def test_every_error_without_context_pickles(cls: type) -> None:
    """A bare instance (no message, no context) pickles too."""
    restored = pickle.loads(pickle.dumps(cls()))
    assert type(restored) is cls
    assert str(restored) == ""


def test_sandbox_not_found_error_keeps_sandbox_id_through_pickle() -> None:
    """``SandboxNotFoundError("x", sandbox_id="s")`` round-trips its id."""
    restored = pickle.loads(pickle.dumps(SandboxNotFoundError("x", sandbox_id="s")))
    assert isinstance(restored, LookupError)
    assert (str(restored), restored.sandbox_id) == ("x", "s")


def test_plugin_error_keeps_type_name_traceback_and_actor_through_pickle() -> None:
    """``PluginError`` carries the original type name, traceback text and actor name across pickling."""
    error = PluginError("m", type_name="t", traceback_text="tb", actor="a")
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.message, restored.type_name, restored.traceback_text, restored.actor) == ("m", "t", "tb", "a")


def test_plugin_error_context_defaults_to_empty_strings() -> None:
    """A ``PluginError`` built without context still has empty ``type_name``/``traceback_text``/``actor``."""
    error = PluginError("m")
    assert (error.type_name, error.traceback_text, error.actor) == ("", "", "")


def test_compilation_error_keeps_its_error_list_through_pickle() -> None:
    """``CompilationError.errors`` (file, line, message) tuples survive pickling."""
    restored = pickle.loads(pickle.dumps(CompilationError("m", errors=[("f.py", 3, "bad")])))
    assert restored.errors == [("f.py", 3, "bad")]
    assert str(restored) == "m"


def test_compilation_error_without_errors_has_an_empty_list() -> None:
    """A ``CompilationError`` with no ``errors`` argument reports an empty list."""
    assert list(CompilationError("m").errors) == []


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_str_of_every_error_is_its_message(cls: type) -> None:
    """``str(error)`` is exactly the message, whatever context is attached."""
    error = cls("the message", sandbox_id="s", name="n")
    assert str(error) == "the message"
    assert error.message == "the message"


@pytest.mark.parametrize("cls", PICKLE_CASES)
def test_every_error_copies_with_context(cls: type) -> None:
    """``copy.copy`` and ``copy.deepcopy`` keep message and context (they use the same reduce)."""
    error = cls("m", sandbox_id="s")
    for duplicate in (copy.copy(error), copy.deepcopy(error)):
        assert type(duplicate) is cls
        assert (str(duplicate), duplicate.sandbox_id) == ("m", "s")


def test_pickled_error_keeps_notes() -> None:
    """Notes added with ``add_note`` travel with the error."""
    error = SandboxNotFoundError("x", sandbox_id="s")
    error.add_note("while creating")
    restored = pickle.loads(pickle.dumps(error))
    assert restored.__notes__ == ["while creating"]


def test_error_raised_after_unpickling_is_caught_by_its_class() -> None:
    """A restored error can be raised and caught by its class and by the base."""
    restored = pickle.loads(pickle.dumps(SandboxNotFoundError("x", sandbox_id="s")))
    with pytest.raises(PluginHostError) as info:
        raise restored
    assert isinstance(info.value, SandboxNotFoundError)
