"""Compression methods, found by name: one module per method.

    from training import methods

    methods.available()                         # ['distill', 'uniform', ...]
    method = methods.get("distill", "lambda_distill=2.0")
    method.description                          # 'distill(lambda_distill=2.0, ...)'

Every module of this package (but `base`) is a method module, imported the
first time `get` or `available` is called; its `Method` subclass registers
itself with `@register`. A method defined elsewhere registers the same way.
`training.pipeline` runs a method's phases; `base` says what a method is.
"""

from __future__ import annotations

import importlib
import pkgutil

from training.methods.base import (
    Method,
    NoOptions,
    Setup,
    Student,
    adam,
    discriminator,
    distillation_trainer,
    key_neutral,
    parse_options,
)

_REGISTRY: dict[str, type[Method]] = {}
_INFRASTRUCTURE = ("base",)


def _qualified(method_class: type) -> str:
    return f"{method_class.__module__}.{method_class.__qualname__}"


def register(method_class: type[Method]) -> type[Method]:
    """Class decorator: makes a `Method` subclass available by its `name`.

    Re-registering the same class (same module and qualified name, e.g. a
    notebook cell run twice) replaces it.

    Raises:
        TypeError: If the class is not a `Method` subclass.
        ValueError: On a missing or malformed `name`, a name another class
            registered, or options without defaults.
    """
    if not (isinstance(method_class, type) and issubclass(method_class, Method)):
        raise TypeError(f"register takes a Method subclass, got {method_class!r}.")
    name = method_class.name
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(
            f"{method_class.__qualname__}.name must be a lower-case identifier, "
            f"got {name!r}."
        )
    existing = _REGISTRY.get(name)
    if existing is not None and _qualified(existing) != _qualified(method_class):
        raise ValueError(
            f"Method name {name!r} is taken by {_qualified(existing)}; choose "
            "another name or unregister it first."
        )
    try:
        method_class()
    except TypeError as error:
        raise ValueError(
            f"Method {name!r} cannot be made with its default options ({error}): "
            "every option needs a default and every abstract phase a body."
        ) from error
    _REGISTRY[name] = method_class
    return method_class


def unregister(name: str) -> None:
    """Removes a registered method (e.g. one a test defined)."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(_unknown(name))
    del _REGISTRY[name]


_discovered = False


def _discover() -> None:
    """Imports every method module of this package once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _INFRASTRUCTURE:
            importlib.import_module(f"{__name__}.{module.name}")


def _unknown(name: str) -> str:
    return f"Unknown method {name!r}; available: {', '.join(available())}."


def available() -> list[str]:
    """Names of the registered methods, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str, options=None, **overrides) -> Method:
    """The method `name`, configured.

    Args:
        name: A registered method name (`available()`).
        options: Its options: a mapping, a `"key=value,..."` string or a
            list of `"key=value"` strings; unset ones keep their defaults.
        **overrides: More options.

    Returns:
        A `Method` instance.

    Raises:
        ValueError: On an unknown name (listing the available ones) or bad
            options (naming the known ones).
    """
    _discover()
    if name not in _REGISTRY:
        raise ValueError(_unknown(name))
    return _REGISTRY[name](options, **overrides)


__all__ = [
    "Method",
    "NoOptions",
    "Setup",
    "Student",
    "adam",
    "available",
    "discriminator",
    "distillation_trainer",
    "get",
    "key_neutral",
    "parse_options",
    "register",
    "unregister",
]
