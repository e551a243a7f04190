"""The reward contract, the registry of named rewards, and weighted combinations.

Contract: ``reward(images, prompts, metadata) -> np.ndarray`` of shape (N,), float, where
``images`` is a uint8 array (N, H, W, 3), ``prompts`` a list of N strings and ``metadata``
a list of N dicts (may be empty dicts). Rewards are black boxes: no gradients flow.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Protocol

import numpy as np

from diffrl.errors import DiffrlError


class Reward(Protocol):
    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray: ...


# name -> zero-argument factory; factories import heavy dependencies lazily.
_REGISTRY: dict[str, Callable[[], Reward]] = {}
# scheme -> one-argument factory for specs "scheme:ARGUMENT" (remote:http://host:port).
_SCHEMES: dict[str, Callable[[str], Reward]] = {}
# Modules that register rewards or schemes when imported (kept lazy so `import diffrl` stays light).
_PROVIDERS = ["diffrl.rewards.simple", "diffrl.rewards.shapes", "diffrl.rewards.models", "diffrl.rewards.remote"]


def register_reward(name: str) -> Callable[[Callable[[], Reward]], Callable[[], Reward]]:
    """Decorator registering a zero-argument factory under `name`."""

    def wrap(factory: Callable[[], Reward]) -> Callable[[], Reward]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def register_reward_scheme(scheme: str) -> Callable[[Callable[[str], Reward]], Callable[[str], Reward]]:
    """Decorator registering `factory(argument)` for reward specs ``scheme:argument``."""

    def wrap(factory: Callable[[str], Reward]) -> Callable[[str], Reward]:
        _SCHEMES[scheme] = factory
        return factory

    return wrap


def _load_providers() -> None:
    for module in _PROVIDERS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # a provider exists but its own import failed: surface it
                raise


def reward_names() -> list[str]:
    _load_providers()
    return sorted(_REGISTRY)


def get_reward(name: str) -> Reward:
    """A reward by registered name, a registered scheme (``remote:URL``), or a user function ``module:function``."""
    _load_providers()
    if name in _REGISTRY:
        return _REGISTRY[name]()
    module_name, sep, attr = name.partition(":")
    if sep and module_name in _SCHEMES:  # e.g. a reward server: remote:http://host:port
        return _SCHEMES[module_name](attr)
    if sep:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise DiffrlError(f"reward {name!r}: cannot import module {module_name!r} ({err})") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise DiffrlError(f"reward {name!r}: {module_name!r} has no callable {attr!r}")
        return fn
    raise DiffrlError(f"unknown reward {name!r}; known: {', '.join(reward_names())} or module:function")


class WeightedSum:
    """sum_k w_k * r_k(images, prompts, metadata); each component is also reported on its own."""

    def __init__(self, parts: list[tuple[str, float, Reward]]):
        self.parts = parts
        self.last_components: dict[str, np.ndarray] = {}

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        total = np.zeros(len(images), dtype=np.float64)
        self.last_components = {}
        for name, weight, fn in self.parts:
            values = check_rewards(fn(images, prompts, metadata), len(images), name)
            self.last_components[name] = values
            total += weight * values
        return total


def check_rewards(values, n: int, name: str = "reward") -> np.ndarray:
    """Validate a reward's output: shape (n,), real numbers. NaN/inf pass through (the trainer skips them)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DiffrlError(f"reward {name!r} returned {type(values).__name__}, expected {n} floats") from None
    if array.shape != (n,):
        raise DiffrlError(f"reward {name!r} returned shape {array.shape}, expected ({n},): one float per image")
    return array


def split_reward_spec(spec: str) -> list[tuple[str, float]]:
    """``"name[:weight],name[:weight]"`` -> [(name, weight)] (``module:function`` names allowed, weight last)."""
    parts = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        # remote:http://host:8000 -> the trailing number is the port, not a weight
        url_without_port = head.startswith("remote:") and not re.search(r"://[^/]*:\d+", head)
        if sep and head and not url_without_port:
            try:
                weight = float(tail)
                name = head
            except ValueError:
                pass
        parts.append((name, weight))
    return parts


def parse_reward_spec(spec: str) -> WeightedSum:
    """The weighted sum of the rewards named in ``spec`` (see `split_reward_spec`)."""
    parts = [(name, weight, get_reward(name)) for name, weight in split_reward_spec(spec)]
    if not parts:
        raise DiffrlError("no reward given (--reward NAME[,NAME...])")
    return WeightedSum(parts)
