"""The public API contract: what ``plugin_host`` and ``actors`` export, and that it is documented."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import actors
import plugin_host
from plugin_host import config, errors, messages, values

DOCUMENTED_MODULES = [errors, messages, values, config]


def _public_objects(module: ModuleType) -> list[tuple[str, object]]:
    """Public classes and functions defined in ``module`` (its ``__all__`` and beyond)."""
    names = set(getattr(module, "__all__", ())) | {n for n in vars(module) if not n.startswith("_")}
    found = []
    for name in sorted(names):
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__:
            found.append((name, obj))
    return found


def _public_methods(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties a class defines itself (attrs-generated dunders excluded)."""
    found = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (classmethod, staticmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            found.append((name, member))
    return found


@pytest.mark.parametrize("name", plugin_host.__all__)
def test_every_plugin_host_export_imports_and_has_a_docstring(name: str) -> None:
    """Each name in ``plugin_host.__all__`` resolves and carries a docstring."""
    obj = getattr(plugin_host, name)
    assert inspect.getdoc(obj), f"plugin_host.{name} has no docstring"


@pytest.mark.parametrize("name", actors.__all__)
def test_every_actors_export_imports_and_has_a_docstring(name: str) -> None:
    """Each name in ``actors.__all__`` resolves and carries a docstring."""
    obj = getattr(actors, name)
    assert inspect.getdoc(obj), f"actors.{name} has no docstring"


def test_plugin_host_exports_are_importable_with_from_import() -> None:
    """``from plugin_host import <name>`` works for every exported name."""
    namespace: dict[str, object] = {}
    exec(f"from plugin_host import {', '.join(plugin_host.__all__)}", namespace)
    assert set(plugin_host.__all__) <= set(namespace)


def test_actors_exports_are_importable_with_from_import() -> None:
    """``from actors import <name>`` works for every exported name."""
    namespace: dict[str, object] = {}
    exec(f"from actors import {', '.join(actors.__all__)}", namespace)
    assert set(actors.__all__) <= set(namespace)


@pytest.mark.parametrize("module", [plugin_host, actors], ids=lambda m: m.__name__)
def test_public_all_is_sorted_and_free_of_duplicates(module: ModuleType) -> None:
    """The re-exporting ``__all__`` lists are sorted and name each export once."""
    assert module.__all__ == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)


def test_plugin_host_module_has_a_docstring_and_a_version() -> None:
    """The package documents itself and has a ``__version__`` string."""
    assert inspect.getdoc(plugin_host)
    assert isinstance(plugin_host.__version__, str) and plugin_host.__version__


def test_plugin_host_unknown_attribute_raises_attribute_error() -> None:
    """The lazy ``__getattr__`` still raises ``AttributeError`` for names it does not know."""
    with pytest.raises(AttributeError):
        plugin_host.NoSuchThing  # noqa: B018


def test_every_value_type_is_reexported_from_plugin_host() -> None:
    """Every class in ``plugin_host.values`` is importable from ``plugin_host`` itself."""
    value_classes = [n for n in values.__all__ if inspect.isclass(getattr(values, n))]
    missing = [n for n in value_classes if n not in plugin_host.__all__]
    assert not missing
    for name in value_classes:
        assert getattr(plugin_host, name) is getattr(values, name)


@pytest.mark.parametrize("module", DOCUMENTED_MODULES, ids=lambda m: m.__name__)
def test_public_submodule_all_names_exist(module: ModuleType) -> None:
    """Every name in a public sub-module's ``__all__`` is defined there."""
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing


@pytest.mark.parametrize("module", DOCUMENTED_MODULES, ids=lambda m: m.__name__)
def test_every_public_class_and_function_of_a_public_module_has_a_docstring(module: ModuleType) -> None:
    """Public classes and functions of errors, messages, values and config are documented."""
    objects = _public_objects(module)
    assert objects
    undocumented = [name for name, obj in objects if not (obj.__doc__ or "").strip()]
    assert not undocumented, f"{module.__name__}: {undocumented}"


@pytest.mark.parametrize("module", DOCUMENTED_MODULES, ids=lambda m: m.__name__)
def test_every_public_method_of_a_public_class_has_a_docstring(module: ModuleType) -> None:
    """Public methods and properties of those classes are documented too."""
    undocumented = [
        f"{cls_name}.{name}"
        for cls_name, cls in _public_objects(module)
        if inspect.isclass(cls)
        for name, member in _public_methods(cls)
        if not (member.__doc__ or "").strip()
    ]
    assert not undocumented, f"{module.__name__}: {undocumented}"


@pytest.mark.parametrize("module", DOCUMENTED_MODULES, ids=lambda m: m.__name__)
def test_public_submodules_have_module_docstrings(module: ModuleType) -> None:
    """Each public sub-module opens with a docstring."""
    assert inspect.getdoc(module)


def test_actors_package_sits_next_to_plugin_host() -> None:
    """The imported ``actors`` is ours: it lives in the same folder as ``plugin_host``."""
    ours = Path(plugin_host.__file__).resolve().parent.parent
    assert Path(actors.__file__).resolve().parent.parent == ours
    assert Path(actors.__file__).resolve().parent.name == "actors"


def test_actors_plugin_module_is_the_one_reexported() -> None:
    """``actors.Plugin`` is the class defined in ``actors.plugin`` (no shadowing package)."""
    assert actors.Plugin is importlib.import_module("actors.plugin").Plugin
    assert actors.Supervisor is importlib.import_module("actors._spec").Supervisor
