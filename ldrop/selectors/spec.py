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


def build_selector(
    selector: SelectorFactory | dict[str, Any], num_layers: int, feature_dim: int, hidden_size: int | None = None
) -> LayerSelector:
    """Instantiate a selector from a factory or a spec dict with ``(num_layers, feature_dim)``.

    Args:
        selector: a selector class, a ``functools.partial`` of one, or a ``{"class_path", "init_args"}`` spec.
        num_layers: ``N``, the backbone's encoder layers.
        feature_dim: channels of the CNN features.
        hidden_size: the encoder's hidden size, the ``feature_dim`` of a selector that reads the output of
            encoder layers (its spec sets ``input="layers"``); ``None``: not known.

    Raises:
        ValueError: a selector that reads encoder layers was built for features of another width.
    """
    spec = selector_spec(selector) if hidden_size is not None else None
    if spec is not None and spec.get("init_args", {}).get("input") == "layers":
        feature_dim = hidden_size
    if isinstance(selector, dict):
        module_name, _, class_name = selector["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name or "ldrop.selectors"), class_name)
        built = cls(num_layers, feature_dim, **selector.get("init_args", {}))
    else:
        built = selector(num_layers, feature_dim)
    if not isinstance(built, LayerSelector):
        raise TypeError(f"selector must build a LayerSelector, got {type(built).__name__}")
    if built.prefix_layers and hidden_size is not None and built.feature_dim != hidden_size:
        raise ValueError(
            f"{type(built).__name__} reads the output of encoder layers (prefix_layers={built.prefix_layers}): "
            f"its feature_dim must be the backbone's hidden size {hidden_size}, got {built.feature_dim}"
        )
    return built
