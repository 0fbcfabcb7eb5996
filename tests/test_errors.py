"""``plugin_host.errors``: one base, builtin refinements, structured context that survives pickling."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest

from plugin_host import errors
from plugin_host.errors import (
    CompilationError,
    PluginError,
    PluginHostError,
    PluginHostWarning,
    SandboxNotFoundError,
)

ERROR_NAMES = [n for n in errors.__all__ if n != "PluginHostWarning"]
ERROR_CLASSES = [getattr(errors, n) for n in ERROR_NAMES]

PICKLE_CASES = [pytest.param(cls, id=cls.__name__) for cls in ERROR_CLASSES]
PROTOCOLS = sorted({0, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL})

# Which builtin each name promises (STYLE rule 5).
EXPECTED_BUILTINS = {
    "ActorNotFoundError": LookupError,
    "SandboxNotFoundError": LookupError,
    "VersionNotFoundError": LookupError,
    "UnknownModuleError": LookupError,
    "CallTimeoutError": TimeoutError,
    "RunTimeoutError": TimeoutError,
    "CompilationTimeoutError": TimeoutError,
    "ConfigError": ValueError,
    "BadRequestError": ValueError,
    "InvalidSpecError": ValueError,
    "CompilationError": ValueError,
}


def test_errors_all_lists_every_exception_class_of_the_module() -> None:
    """No exception class defined in ``plugin_host.errors`` is left out of its ``__all__``."""
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_every_error_derives_from_plugin_host_error_and_exception(cls: type) -> None:
    """Callers can catch any of our errors as ``PluginHostError`` or ``Exception``."""
    assert issubclass(cls, PluginHostError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_every_error_name_ends_in_error(cls: type) -> None:
    """Error class names end in ``Error``."""
    assert cls.__name__.endswith("Error")


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_error_also_subclasses_the_builtin_its_name_implies(name: str) -> None:
    """NotFound/Unknown are LookupError, Timeout is TimeoutError, Config/BadRequest/Spec/Compilation ValueError."""
    assert issubclass(getattr(errors, name), EXPECTED_BUILTINS[name])


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_every_notfound_unknown_and_timeout_error_refines_its_builtin(cls: type) -> None:
    """The naming rule holds for every class, including ones added later."""
    if "NotFound" in cls.__name__ or cls.__name__.startswith("Unknown"):
        assert issubclass(cls, LookupError)
    if "Timeout" in cls.__name__:
        assert issubclass(cls, TimeoutError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=ERROR_NAMES)
def test_every_error_can_be_caught_as_its_builtin(cls: type) -> None:
    """Raising one of our errors is caught by an ``except`` on each builtin base it declares."""
    for builtin in (LookupError, TimeoutError, ValueError, RuntimeError):
        if issubclass(cls, builtin):
            with pytest.raises(builtin):
                raise cls("boom")


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
