"""Selector specs: a serialisable ``{"class_path", "init_args"}`` description of a selector, and building one."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from .base import LayerSelector

#: Builds a selector from ``(num_layers, feature_dim)``: a selector class or a ``functools.partial`` of one.
SelectorFactory = Callable[[int, int], LayerSelector]


def selector_spec(selector: SelectorFactory | dict[str, Any] | None) -> dict[str, Any] | None:
    """A serialisable ``{"class_path", "init_args"}`` description of a selector factory.

    Accepts a selector class, a ``functools.partial`` of one (what a YAML ``class_path`` becomes) or a spec
    dict; it is what checkpoints store so that ``load_from_checkpoint`` rebuilds the same selector.
    """
    if selector is None or isinstance(selector, dict):
        return selector
    func, kwargs = selector, {}
    while isinstance(func, functools.partial):
        kwargs = {**func.keywords, **kwargs}
        classes = [a for a in func.args if isinstance(a, type)]
        func = classes[0] if classes else func.func
    if not isinstance(func, type):
        return None  # an arbitrary callable: nothing serialisable to record
    return {"class_path": f"{func.__module__}.{func.__qualname__}", "init_args": kwargs}


def build_selector(selector: SelectorFactory | dict[str, Any], num_layers: int, feature_dim: int) -> LayerSelector:
    """Instantiate a selector from a factory or a spec dict with ``(num_layers, feature_dim)``."""
    if isinstance(selector, dict):
        module_name, _, class_name = selector["class_path"].rpartition(".")
        if not module_name:
            module_name = "ldrop.selectors"
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(num_layers, feature_dim, **selector.get("init_args", {}))
    built = selector(num_layers, feature_dim)
    if not isinstance(built, LayerSelector):
        raise TypeError(f"selector must build a LayerSelector, got {type(built).__name__}")
    return built
