"""The error hierarchy (tradepulse/errors.py): every exception class of the package derives from
TradePulseError, and the package raises no bare RuntimeError/ValueError for its own conditions."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import tradepulse
from tradepulse.errors import InvalidArgument, TradePulseError

PACKAGE = Path(tradepulse.__file__).parent
# Internal control flow, never raised out of its module (massive.py: a refused connection's retry).
PRIVATE_SIGNALS = {"tradepulse.sources.massive._MaxConnections"}


def exception_classes() -> list[type[BaseException]]:
    found = []
    for module in pkgutil.walk_packages([str(PACKAGE)], "tradepulse."):
        mod = importlib.import_module(module.name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == mod.__name__:
                found.append(obj)
    return found


def test_every_exception_class_of_the_package_is_a_tradepulse_error() -> None:
    classes = exception_classes()
    assert len(classes) > 10  # the walk found the package's classes
    strays = [
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if not issubclass(c, TradePulseError) and f"{c.__module__}.{c.__qualname__}" not in PRIVATE_SIGNALS
    ]
    assert strays == []


def test_invalid_argument_keeps_value_error_semantics() -> None:
    with pytest.raises(ValueError):
        raise InvalidArgument("still a ValueError for callers and pydantic validators")


def test_no_bare_runtime_or_value_error_is_raised() -> None:
    bare = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id in {"RuntimeError", "ValueError"}:
                    bare.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert bare == [], "raise a tradepulse.errors class (or a subclass) instead"
