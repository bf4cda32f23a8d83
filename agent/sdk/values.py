"""What a training script passes the SDK, checked and converted: metric values, steps, seeds.

A mistake in an argument (a non-numeric metric, a bad seed) must raise at the
call, in the script's own line, so the checks live here and run in the
training thread. They are cheap: plain numbers pass one type test; numpy
values become floats at once; a tensor-like value (`.item()`, which may sync
its device) is only wrapped, to be read later by the sender thread.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol, SupportsFloat

__all__ = [
    "PLAIN_TYPES",
    "Later",
    "MetricValue",
    "SupportsItem",
    "check_values",
    "floats",
    "opt_str",
    "seeds",
    "step_number",
    "to_float",
]

PLAIN_TYPES: set[type] = {float, int, bool}
"""Value types `Run.log` buffers as they are (immutable; float() in the sender). numpy
scalar types (float64, float32, int64, bool_...) join on first sight."""

_FLOAT = frozenset({float})
_INT64 = range(-(2**63), 2**63)


class SupportsItem(Protocol):
    """A one-element tensor/array or a numpy scalar: `.item()` returns a Python number."""

    def item(self) -> Any: ...


MetricValue = SupportsFloat | SupportsItem
"""int, float, bool, and numpy/torch scalar-likes (`.item()` or `__float__`)."""


class Later:
    """A tensor-like value (`.item()`, e.g. a CUDA tensor) read by the sender thread.

    Its `.item()` may wait for the device; it runs in the sender, so the
    training thread never syncs for a metric. The value is read when the
    sender converts it (within ~0.25 s): a tensor modified in place after
    `log` (an accumulator) reports its later value; log a fresh one
    (`loss.detach()`, `acc.clone()`).
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __float__(self) -> float:
        value = self.obj.item()
        if isinstance(value, str | bytes | bytearray | complex):
            raise TypeError(f"item() returned {type(value).__name__}")
        return float(value)


def _named(
    what: str,
    values: Mapping[Any, Any],
    keep: Collection[type],
    convert: Callable[[str, Any], Any],
) -> dict[str, Any]:
    """A copy of `values`: names checked, values of a `keep` type as they are, others
    through `convert(name, value)`."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if type(name) is not str or not name:
            raise TypeError(f"{what} names must be non-empty str, got {name!r}")
        out[name] = value if type(value) in keep else convert(name, value)
    return out


def check_values(values: Mapping[Any, Any]) -> dict[str, Any]:
    """The slow path of `Run.log`: a copy of `values` ready to buffer, or TypeError/ValueError.

    Names must be non-empty str. Plain numbers stay; numpy values become
    floats now (cheap, no device; arrays are mutable); other tensor-likes
    (`.item()`) are checked to hold one element without reading it (`numel()`
    or `size`), detached from autograd (so no graph stays alive) and wrapped
    for the sender to read; anything else with `__float__`/`__index__`
    (Fraction, Decimal) is converted now.
    """
    return _named("metric", values, PLAIN_TYPES, _value)


def _value(name: str, value: Any) -> Any:
    if isinstance(value, str | bytes | bytearray):
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
    item = getattr(value, "item", None)
    if callable(item) and not type(value).__module__.startswith("numpy"):
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else getattr(value, "size", 1)
        if type(size) is int and size != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got {size} elements")
        if getattr(value, "requires_grad", False) is True:
            value = value.detach()
        return Later(value)
    try:
        if callable(item):  # numpy scalar or array: CPU memory, read now
            kind = getattr(getattr(value, "dtype", None), "kind", None)
            scalar_type = type(value)
            try:
                value = item()
            except (ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"metric {name!r} must be a scalar: {exc}") from None
            if isinstance(value, str | bytes | bytearray):
                raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
            if kind in ("f", "i", "u", "b") and not hasattr(scalar_type, "__setitem__"):
                PLAIN_TYPES.add(scalar_type)  # immutable real scalar: the fast path from now
        return float(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "must be a scalar" in str(exc):
            raise
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}") from None
    except OverflowError:
        raise ValueError(f"metric {name!r}: {value!r} does not fit a float") from None


def to_float(name: str, value: object) -> float:
    """The float of a metric value; TypeError/ValueError name the metric."""
    if type(value) is int or type(value) is bool:
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"metric {name!r}: {value} does not fit a float") from None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes | bytearray):
        try:
            value = item()
        except (ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise ValueError(f"metric {name!r} must be a scalar: {exc}") from None
    if isinstance(value, str | bytes | bytearray):
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}") from None
    except OverflowError:
        raise ValueError(f"metric {name!r}: {value!r} does not fit a float") from None


def floats(what: str, values: Mapping[str, MetricValue] | None) -> dict[str, float]:
    """Checkpoint metrics or a run summary as floats, read now ({} for None)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a mapping of name to number")
    return _named(what, values, _FLOAT, to_float)


def step_number(value: object) -> int:
    """A step number: an int, or anything with `__index__` but a bool."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"step must be an int, not {type(value).__name__}")
    return operator.index(value)  # type: ignore[arg-type]


def opt_str(what: str, value: object) -> str | None:
    """`value` when it is a str or None, else TypeError."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{what} must be a str or None, not {type(value).__name__}")


def seeds(value: object) -> dict[str, int]:
    """The seeds given to `start_run`: names to signed 64-bit integers ({} for None)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError("seeds must be a mapping of name to int")
    out: dict[str, int] = {}
    for key, seed in value.items():
        if type(key) is not str or not key:
            raise TypeError(f"seed names must be non-empty str, got {key!r}")
        if isinstance(seed, bool) or not hasattr(type(seed), "__index__"):
            raise TypeError(f"seed {key!r} must be an int, not {type(seed).__name__}")
        number = operator.index(seed)
        if number not in _INT64:
            raise ValueError(f"seed {key!r}: {number} does not fit a signed 64-bit integer")
        out[key] = number
    return out
