"""The validation rules of the input contracts, derived from the pydantic models: one source for the
models, ingest (`tradepulse.sources.parse`, the Massive wire names) and the runner
(`tradepulse.bus.decode`, per row and a column at a time).

The hot paths do not build a pydantic object per event (~10× slower); they check the required fields of
`Trade`, `Quote` and `NewsArticle` with the `Rule` of each, read here from the field's annotation and
constraints (`min_length`, `gt`, `ge`, `lt`, `le`). The models are strict (no type coercion, no NaN),
so each rule is exactly what `Model.model_validate` enforces on that field, and the reason of a
rejection is worded once, here, for every path. The one rule across fields, the bounded notional
(price × size, `models.MAX_NOTIONAL`), is `NOTIONALS`: read from each model's `NOTIONALS` pairs and
worded by `models.notional_error`, which the model's own validator calls too.
"""

from __future__ import annotations

import math
import operator
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import annotated_types
from pydantic import BaseModel

from tradepulse.errors import InvalidArgument
from tradepulse.models import (
    INT64_MAX,
    INT64_MIN,
    MAX_NOTIONAL,
    NewsArticle,
    Quote,
    Trade,
    VendorBar,
    notional_error,
)
from tradepulse.topics import NEWS, QUOTES, TRADES, VENDOR_BARS


class InvalidField(InvalidArgument):
    """A field value that breaks its rule; the message is the dead-letter reason."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


@dataclass(frozen=True)
class Rule:
    """What one required field must be: `kind` (str, int or float), and its constraints. Ints are also
    int64 (`int64_bounded`: the numpy columns, SQLite and Parquet store them so); floats are finite."""

    kind: type
    min_length: int = 0
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    check: Callable[[str, Any], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check", _checker(self))

    @property
    def bounds(self) -> list[tuple[str, float]]:
        """The (operator, limit) constraints, e.g. [(">", 0)]."""
        pairs = ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
        return [(op, limit) for op, limit in pairs if limit is not None]

    def all_pass(self, values: Sequence[Any]) -> bool:
        """True only if every value passes `check`; False if some value may not (then `check` each one
        for the verdict and its reason). A pass over the whole column in C-level builtins (types, min,
        max, sum), for the hot paths that see batches of values; never True where `check` would fail."""
        if not values:
            return True
        types_ = set(map(type, values))
        if self.kind is str:
            if types_ != {str}:
                return False
            return self.min_length == 0 or min(map(len, values)) >= self.min_length
        if self.kind is int:
            if types_ != {int}:  # exact types, as `check`: bool is not an int
                return False
            lo, hi = min(values), max(values)
            if lo < INT64_MIN or hi > INT64_MAX:
                return False
        else:
            if not types_ <= {float, int}:
                return False
            try:  # a NaN or an infinity anywhere makes the sum one (a huge sum only sends them to `check`)
                if not math.isfinite(sum(values)):
                    return False
            except OverflowError:
                return False
            lo, hi = min(values), max(values)
        return (
            (self.gt is None or lo > self.gt)
            and (self.ge is None or lo >= self.ge)
            and (self.lt is None or hi < self.lt)
            and (self.le is None or hi <= self.le)
        )


def missing(name: str) -> InvalidField:
    return InvalidField(f"missing field {name!r}", missing=True)


def _checker(rule: Rule) -> Callable[[str, Any], Any]:
    """`check(name, value)`: the value if it passes, else raises InvalidField with the reason. Built per
    rule, for speed (ingest calls it per field of every event): exact `type` checks (bool is not an
    int, and `true` is not an exchange id) and the bounds as inline comparisons."""
    gt, ge, lt, le = rule.gt, rule.ge, rule.lt, rule.le
    bounded = bool(rule.bounds)

    def out_of_bounds(name: str, value: Any) -> InvalidField:
        op, limit = next((op, limit) for op, limit in rule.bounds if not _OPERATORS[op](value, limit))
        return InvalidField(f"field {name!r} must be {op} {limit}, got {value!r}")

    if rule.kind is str:
        need = "a non-empty string" if rule.min_length else "a string"
        min_length = rule.min_length

        def check_str(name: str, value: Any) -> Any:
            if type(value) is not str or len(value) < min_length:
                if value is None:
                    raise missing(name)
                raise InvalidField(f"field {name!r} must be {need}, got {value!r}")
            return value

        return check_str
    if rule.kind is int:

        def check_int(name: str, value: Any) -> Any:
            if type(value) is not int:
                if value is None:
                    raise missing(name)
                raise InvalidField(f"field {name!r} must be an integer, got {value!r}")
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidField(f"field {name!r} must fit in 64 bits, got {value!r}")
            if bounded and (
                (gt is not None and not value > gt)
                or (ge is not None and not value >= ge)
                or (lt is not None and not value < lt)
                or (le is not None and not value <= le)
            ):
                raise out_of_bounds(name, value)
            return value

        return check_int

    isfinite = math.isfinite

    def check_float(name: str, value: Any) -> Any:
        kind = type(value)
        if (kind is not float and kind is not int) or not isfinite(value):
            if value is None:
                raise missing(name)
            raise InvalidField(f"field {name!r} must be a finite number, got {value!r}")
        if bounded and (
            (gt is not None and not value > gt)
            or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt)
            or (le is not None and not value <= le)
        ):
            raise out_of_bounds(name, value)
        return value

    return check_float


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda v, limit: v > limit,
    ">=": lambda v, limit: v >= limit,
    "<": lambda v, limit: v < limit,
    "<=": lambda v, limit: v <= limit,
}


def _rule(annotation: Any, metadata: list[Any]) -> Rule:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:  # an alias such as Ticker or EpochMs
        return _rule(args[0], [*args[1:], *metadata])
    if annotation not in (str, int, float):
        raise TypeError(f"no rule for a required field of type {annotation!r}")
    limits: dict[str, Any] = {}
    for item in metadata:
        for name in ("min_length", "gt", "ge", "lt", "le"):
            value = getattr(item, name, None)
            if value is not None:
                limits[name] = value
        if isinstance(item, annotated_types.Len):  # min_length arrives as Len(min_length, ...)
            limits["min_length"] = item.min_length
    if annotation is int and limits.get("ge") == INT64_MIN:  # int64 is every int's rule already
        del limits["ge"]
    if annotation is int and limits.get("le") == INT64_MAX:
        del limits["le"]
    return Rule(annotation, **limits)


def rules_of(model: type[BaseModel]) -> dict[str, Rule]:
    """The rule of every required field of `model` (fields with a default are optional on the wire)."""
    rules = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            annotation = info.annotation
            if typing.get_origin(annotation) in (typing.Union, types.UnionType):
                raise TypeError(f"{model.__name__}.{name}: a required field may not be optional")
            rules[name] = _rule(annotation, list(info.metadata))
    return rules


RULES: dict[str, dict[str, Rule]] = {
    TRADES: rules_of(Trade),
    QUOTES: rules_of(Quote),
    NEWS: rules_of(NewsArticle),
    VENDOR_BARS: rules_of(VendorBar),
}
"""Input topic → field → rule: what the runner checks on every input message."""


@dataclass(frozen=True)
class Notional:
    """price × size of one print (or one side of a quote) at most `models.MAX_NOTIONAL`: checked after
    both fields passed their own rules (so both are finite numbers)."""

    price: str
    size: str
    limit: float = MAX_NOTIONAL

    def check(self, price_name: str, price: float, size_name: str, size: float) -> None:
        """Raises InvalidField with the reason, under the given (e.g. wire) names."""
        error = notional_error(price_name, price, size_name, size)
        if error is not None:
            raise InvalidField(error)

    def all_pass(self, prices: Sequence[float], sizes: Sequence[float]) -> bool:
        """True only if `check` passes every (price, size) pair of two columns whose values passed their
        own rules (`Rule.all_pass`)."""
        return not prices or max(map(operator.mul, prices, sizes)) <= self.limit


NOTIONALS: dict[str, tuple[Notional, ...]] = {
    TRADES: tuple(Notional(p, s) for p, s in Trade.NOTIONALS),
    QUOTES: tuple(Notional(p, s) for p, s in Quote.NOTIONALS),
    NEWS: (),
    VENDOR_BARS: (),
}
"""Input topic → its bounded notionals (checked after the field rules)."""
