"""``plugin_host.messages``: frozen, picklable request and reply classes, and cloudpickle ``Blob``s."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from plugin_host import messages
from plugin_host.errors import BadRequestError, SandboxNotFoundError
from plugin_host.messages import Blob, CreateSandbox, Failed, Ok, Request, unblob
from plugin_host.values import Artifact, Event

MESSAGE_CLASSES = [getattr(messages, n) for n in messages.__all__ if inspect.isclass(getattr(messages, n))]
REQUEST_CLASSES = [c for c in MESSAGE_CLASSES if issubclass(c, Request)]

# Sample values for fields without a default, by field name.
SAMPLES: dict[str, Any] = {
    "sandbox_id": "sb-1",
    "supervisor": "root:Root",
    "name": "counter",
    "request": ("inc", 1),
    "message": {"reset": True},
    "fn": Blob(b"not-loaded"),
    "specs": [CreateSandbox(sandbox_id="a", supervisor="root:Root")],
    "sandbox_ids": ["a", "b"],
    "data": b"\x00bytes",
    "value": [1, 2],
    "error": BadRequestError("bad"),
    "address": ("127.0.0.1", 1900),
    "incarnation": 3,
    "artifacts": [Artifact("counter", "counter.py", "0" * 64, "X = 1\n")],
    "module": "counter",
    "version": 2,
    "event": Event("started", "sb-1"),
}


def build(cls: type) -> Any:
    """An instance of ``cls`` with every field set to a non-default sample where one is known."""
    kwargs = {f.name: SAMPLES[f.name] for f in attrs.fields(cls) if f.name in SAMPLES}
    if "corr" in attrs.fields_dict(cls):
        kwargs["corr"] = "c-42"
    return cls(**kwargs)


def test_message_module_has_request_classes_for_the_core_host_methods() -> None:
    """The admin protocol names its core requests as the design says."""
    names = {c.__name__ for c in REQUEST_CLASSES}
    assert {
        "CreateSandbox",
        "DestroySandbox",
        "RestartSandbox",
        "ListSandboxes",
        "GetSandboxInfo",
        "Call",
        "Cast",
        "Run",
    } <= names


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_every_message_class_is_an_attrs_frozen_class(cls: type) -> None:
    """Each message class is an attrs class whose instances refuse assignment."""
    assert attrs.has(cls)
    instance = build(cls)
    field = attrs.fields(cls)[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(instance, field, "changed")


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_every_message_class_refuses_new_attributes(cls: type) -> None:
    """Slotted frozen messages cannot grow ad-hoc attributes."""
    with pytest.raises((attrs.exceptions.FrozenInstanceError, AttributeError)):
        build(cls).unexpected = 1


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=lambda c: c.__name__)
def test_every_request_pickles_round_trip_equal(cls: type) -> None:
    """A request survives Thespian's plain-pickle transport and compares equal."""
    request = build(cls)
    restored = pickle.loads(pickle.dumps(request))
    assert restored == request
    assert type(restored) is cls
    assert restored.corr == "c-42"


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=lambda c: c.__name__)
def test_every_request_takes_keyword_arguments_only(cls: type) -> None:
    """Requests are keyword-only, so adding a field never shifts positional meaning."""
    assert all(f.kw_only for f in attrs.fields(cls))


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=lambda c: c.__name__)
def test_every_request_carries_a_correlation_id_defaulting_to_empty(cls: type) -> None:
    """``corr`` exists on every request and defaults to an empty string."""
    assert attrs.fields_dict(cls)["corr"].default == ""


@pytest.mark.parametrize("cls", REQUEST_CLASSES, ids=lambda c: c.__name__)
def test_evolve_gives_an_updated_copy_of_a_request(cls: type) -> None:
    """``attrs.evolve`` changes one field and leaves the original untouched."""
    request = build(cls)
    updated = attrs.evolve(request, corr="c-43")
    assert (request.corr, updated.corr) == ("c-42", "c-43")
    assert updated != request


@pytest.mark.parametrize(
    "cls", [c for c in MESSAGE_CLASSES if c is not Failed and c not in REQUEST_CLASSES], ids=lambda c: c.__name__
)
def test_every_other_message_pickles_round_trip_equal(cls: type) -> None:
    """``Ok``, ``Blob`` and ``ActorRef`` round-trip through pickle equal too."""
    message = build(cls)
    assert pickle.loads(pickle.dumps(message)) == message


def test_hashable_requests_hash_by_value() -> None:
    """Two equal requests without list fields hash equally."""
    a = messages.DestroySandbox(sandbox_id="x", corr="1")
    b = messages.DestroySandbox(sandbox_id="x", corr="1")
    assert a == b and hash(a) == hash(b)
    assert a != messages.DestroySandbox(sandbox_id="x", corr="2")


def test_ok_carries_its_value_and_corr() -> None:
    """``Ok(value, corr)`` keeps both through pickling."""
    restored = pickle.loads(pickle.dumps(Ok({"a": 1}, corr="c-1")))
    assert (restored.value, restored.corr) == ({"a": 1}, "c-1")


def test_ok_defaults_to_none_and_empty_corr() -> None:
    """A bare ``Ok()`` means success with no value."""
    assert (Ok().value, Ok().corr) == (None, "")


def test_failed_carries_its_error_and_corr_through_pickle() -> None:
    """``Failed(error, corr)`` keeps the error's type, message and context, and the corr."""
    reply = Failed(SandboxNotFoundError("no such sandbox", sandbox_id="s"), corr="c-2")
    restored = pickle.loads(pickle.dumps(reply))
    assert restored.corr == "c-2"
    assert isinstance(restored.error, SandboxNotFoundError)
    assert (str(restored.error), restored.error.sandbox_id) == ("no such sandbox", "s")


def test_failed_is_frozen() -> None:
    """A ``Failed`` reply cannot be altered."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Failed(BadRequestError("x")).corr = "y"  # type: ignore[misc]


def test_blob_round_trips_a_lambda() -> None:
    """``Blob.dump`` / ``load`` carry a lambda and its closure."""
    offset = 40
    blob = Blob.dump(lambda x: x + offset)
    assert isinstance(blob.data, bytes)
    assert blob.load()(2) == 42


def test_blob_round_trips_a_class_defined_in_a_function() -> None:
    """A class local to this function (not importable) survives the round trip with its methods."""

    class Local:
        def __init__(self, n: int) -> None:
            self.n = n

        def double(self) -> int:
            return self.n * 2

    cls = Blob.dump(Local).load()
    assert cls.__name__ == "Local"
    assert cls(21).double() == 42
    instance = Blob.dump(Local(5)).load()
    assert instance.double() == 10


def test_blob_is_plain_picklable_for_thespian() -> None:
    """A ``Blob`` of a local lambda is itself plain-picklable, unlike the lambda."""
    fn = lambda: "hi"  # noqa: E731
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(fn)
    blob = pickle.loads(pickle.dumps(Blob.dump(fn)))
    assert blob.load()() == "hi"


def test_blob_carries_local_code_by_value_into_a_fresh_interpreter(tmp_path: Path) -> None:
    """A lambda and a local class load in another interpreter that cannot import this test module."""

    class Greeter:
        def greet(self, who: str) -> str:
            return f"hello {who}"

    payload = tmp_path / "blob.bin"
    payload.write_bytes(pickle.dumps((Blob.dump(lambda: 6 * 7), Blob.dump(Greeter))))
    script = (
        "import pickle, sys; fn, cls = [b.load() for b in pickle.loads(open(sys.argv[1], 'rb').read())]; "
        "print(fn(), cls().greet('world'))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(payload)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42 hello world"


def test_unblob_loads_blobs_and_passes_other_values_through() -> None:
    """``unblob`` returns a Blob's value and leaves plain data alone."""
    assert unblob(Blob.dump([1, 2])) == [1, 2]
    assert unblob({"plain": 1}) == {"plain": 1}
    assert unblob(None) is None


def test_blobs_compare_by_their_bytes() -> None:
    """Two blobs of equal data are equal (messages compare by value)."""
    assert Blob.dump((1, "a")) == Blob.dump((1, "a"))


def test_admin_global_name_is_the_documented_one() -> None:
    """The admin actor's global name is API: ``plugin_host.admin``."""
    assert messages.ADMIN_GLOBAL_NAME == "plugin_host.admin"
