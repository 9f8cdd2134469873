"""The design of a simulation study: a grid (or list) of conditions, each keyed by a stable hash.

A condition's key is the first 12 hex digits of the SHA-256 of its factor values written as canonical
JSON (keys sorted).  The key, not the condition's position in the design, names its results shard and
seeds its random numbers, so reordering the design or adding a condition changes nothing for the
others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from ..errors import MlsimkitError


class DesignError(MlsimkitError):
    """The design of a simulation study is malformed."""


_KEY_DIGITS = 12


def _plain(value: Any, factor: str) -> Any:
    """Return ``value`` as a plain JSON scalar (str, int, float, bool or None), or raise."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise DesignError(f"factor '{factor}': value {value!r} is not finite; use finite numbers or strings")
        return value
    raise DesignError(
        f"factor '{factor}': value {value!r} of type {type(value).__name__} is not allowed; factor values "
        "must be strings, numbers, booleans or None (name a generator or method by a string)"
    )


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "str"


def condition_key(values: Mapping[str, Any]) -> str:
    """The stable short hash of a condition's factor values (order of the factors does not matter)."""
    text = json.dumps(dict(values), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_KEY_DIGITS]


class Condition(Mapping):
    """One condition of a design: read-only mapping of factor name to value, with ``.key``.

    ``condition["n_schools"]`` or ``condition.values["n_schools"]``; ``condition.key`` is the short stable
    hash; ``condition.label`` a readable ``n_schools=10, generator=diffusion``.
    """

    __slots__ = ("_values", "_key")

    def __init__(self, values: Mapping[str, Any]):
        plain = {str(k): _plain(v, str(k)) for k, v in dict(values).items()}
        self._values = plain
        self._key = condition_key(plain)

    @property
    def values(self) -> dict:  # type: ignore[override]
        return dict(self._values)

    @property
    def key(self) -> str:
        return self._key

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._values.items()) or "(single condition)"

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"condition {self.label} has no factor '{name}'; factors: {list(self._values)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        # Attribute access to factors (condition.n_schools) for convenience in generate/analyse.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"condition has no factor '{name}'") from None

    def __getstate__(self):
        return self._values

    def __setstate__(self, state):
        self._values = state
        self._key = condition_key(state)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Condition):
            return self._key == other._key and self._values == other._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Condition({self._values!r}, key='{self._key}')"


class Design:
    """The conditions of a simulation study.

    ``Design({"n_schools": [10, 25], "generator": ["diffusion", "traditional"]})`` is the full grid
    (last factor varies fastest); ``Design([{"n_schools": 10, "generator": "diffusion"}, ...])`` lists
    conditions one by one for designs that are not grids (a factor missing from a condition is None).
    """

    def __init__(self, factors: Mapping[str, Iterable[Any]] | Iterable[Mapping[str, Any]]):
        if isinstance(factors, Mapping):
            names = [str(k) for k in factors]
            levels = []
            for name, vals in factors.items():
                if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
                    vals = [vals]
                vals = list(vals)
                if not vals:
                    raise DesignError(f"factor '{name}' has no levels; give at least one value")
                levels.append(vals)
            rows = [dict(zip(names, combo)) for combo in itertools.product(*levels)]
        else:
            rows = []
            for i, item in enumerate(factors):
                if not isinstance(item, Mapping):
                    raise DesignError(
                        f"design condition {i} is a {type(item).__name__}; expected a dict of factor values"
                    )
                rows.append(dict(item))
            if not rows:
                raise DesignError("the design has no conditions; give a dict of factor levels or a list of dicts")
            names = []
            for row in rows:
                for k in row:
                    if str(k) not in names:
                        names.append(str(k))
            rows = [{n: row.get(n) for n in names} for row in rows]
        self.factors: list[str] = names
        reserved = set(names) & _RESERVED
        if reserved:
            raise DesignError(
                f"factor name(s) {sorted(reserved)} clash with result columns; rename them "
                f"(reserved: {sorted(_RESERVED)})"
            )
        self.conditions: list[Condition] = [Condition(r) for r in rows]
        seen: dict[str, Condition] = {}
        for c in self.conditions:
            if c.key in seen:
                raise DesignError(f"the design lists condition {c.label} twice")
            seen[c.key] = c
        for name in names:
            kinds = {_kind(c[name]) for c in self.conditions if c[name] is not None}
            if len(kinds) > 1:
                raise DesignError(
                    f"factor '{name}' mixes value types {sorted(kinds)}; give all its levels as one type"
                )
        self._by_key = seen

    @property
    def hash(self) -> str:
        """Hash of the set of conditions (independent of their order)."""
        text = json.dumps(sorted(c.key for c in self.conditions))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.conditions)

    def __iter__(self) -> Iterator[Condition]:
        return iter(self.conditions)

    def __getitem__(self, key: int | str) -> Condition:
        if isinstance(key, str):
            try:
                return self._by_key[key]
            except KeyError:
                raise KeyError(f"no condition with key '{key}' in this design") from None
        return self.conditions[key]

    def to_frame(self) -> pd.DataFrame:
        """One row per condition: ``condition`` (key) and the factor columns."""
        return pd.DataFrame([{"condition": c.key, **c.values} for c in self.conditions],
                            columns=["condition", *self.factors])

    def to_records(self) -> list[dict]:
        return [{"key": c.key, "values": c.values} for c in self.conditions]

    def __repr__(self) -> str:
        return f"Design({len(self)} conditions, factors={self.factors}, hash='{self.hash}')"


_RESERVED = {
    "condition", "rep", "method", "parameter", "estimate", "se", "ci_lower", "ci_upper", "pred_error",
    "status", "message", "warnings", "fit_time", "seed", "redraws", "redraw_log", "truth", "true_value",
}
