"""Checks shared by the objectives: a params key naming columns of the study's schema.

Each check returns a list of ``(key path, message)`` problems, so that :mod:`mlsimkit.check` can report
every problem of a params file at once. ``level`` is ``"student"`` (the bottom table of the schema) or
``"school"`` (the top table), the paper's words for the two levels.
"""

from __future__ import annotations

import re
from typing import Any

from ..schema import Schema

LEVELS = ("student", "school")
_DUMMY = re.compile(r"^(?P<base>.+)\[T\.(?P<level>.+)\]$")


def level_table(schema: Schema, level: str) -> str:
    return schema.bottom if level == "student" else schema.top


def level_of_column(schema: Schema, name: str) -> str | None:
    """``"student"`` or ``"school"`` for a declared non-key variable, ``None`` otherwise."""
    for lvl in LEVELS:
        col = schema.tables[level_table(schema, lvl)].columns.get(name)
        if col is not None and col.kind != "id":
            return lvl
    return None


def column(schema: Schema, key: str, name: Any, level: str, *, numeric: bool = False) -> list[tuple[str, str]]:
    """Problems of one column named at ``key``: it must be a declared variable of the ``level`` table
    (not a key), and numerical when ``numeric``."""
    if not isinstance(name, str) or not name:
        return [(key, f"expected a column name (text), got {name!r}")]
    table = level_table(schema, level)
    keys = {c for t in schema.tables.values() for c in t.key_columns}
    if name in keys:
        return [(key, f"column {name!r} is a key (id) column; expected a {level}-level variable of table '{table}'")]
    actual = level_of_column(schema, name)
    if actual is None:
        have = schema.tables[table].data_columns
        return [(key, f"column {name!r} is not in the schema; expected a {level}-level variable of table "
                      f"'{table}': one of {have}")]
    if actual != level:
        return [(key, f"column {name!r} is a {actual}-level variable (table '{level_table(schema, actual)}'); "
                      f"expected a {level}-level variable of table '{table}'")]
    col = schema.tables[table].columns[name]
    if numeric and not col.is_numerical:
        return [(key, f"column {name!r} is {col.kind}; expected a numerical column")]
    return []


def column_list(schema: Schema, key: str, names: Any, level: str, *, allow_empty: bool = True) -> list[tuple[str, str]]:
    """Problems of a list of column names at ``key`` (each checked by :func:`column`; no duplicates)."""
    if names is None:
        names = []
    if not isinstance(names, list):
        return [(key, f"expected a list of {level}-level column names, got {names!r}")]
    if not names and not allow_empty:
        return [(key, f"expected at least one {level}-level column")]
    out = []
    for i, n in enumerate(names):
        out += column(schema, f"{key}[{i}]", n, level)
    dup = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if dup:
        out.append((key, f"column(s) {dup} listed twice"))
    return out


def coefficient_base(schema: Schema, key: str, name: Any) -> tuple[str | None, list[tuple[str, str]]]:
    """The variable behind a coefficient name (``x`` or ``x[T.level]`` for a category's dummy) and the
    problems of the name: a dummy needs a categorical variable with that (non-reference) level, a plain
    name a numerical one."""
    if not isinstance(name, str):
        return None, [(key, f"expected a coefficient name (text), got {name!r}")]
    m = _DUMMY.match(name)
    base = m.group("base") if m else name
    lvl = level_of_column(schema, base)
    if lvl is None:
        return None, [(key, f"coefficient {name!r}: column {base!r} is not a variable of the schema")]
    col = schema.column(base)
    if m:
        levels = list(col.levels or ())
        if not col.is_category or m.group("level") not in levels[1:]:
            return base, [(key, f"coefficient {name!r}: expected 'column[T.level]' with a non-reference level of "
                                f"the categorical column {base!r} (levels {levels})")]
    elif not col.is_numerical:
        levels = list(col.levels or ())
        hint = f"; name a dummy, e.g. '{base}[T.{levels[1]}]'" if len(levels) > 1 else ""
        return base, [(key, f"coefficient {name!r}: column {base!r} is {col.kind}{hint}")]
    return base, []


def boolean(key: str, value: Any) -> list[tuple[str, str]]:
    return [] if isinstance(value, bool) else [(key, f"expected true or false, got {value!r}")]


def unknown_keys(key: str, mapping: Any, allowed) -> list[tuple[str, str]]:
    if not isinstance(mapping, dict):
        return [(key, f"expected a mapping, got {mapping!r}")]
    return [(f"{key}.{k}", f"unknown key; expected one of {sorted(allowed)}") for k in mapping if k not in allowed]


def check_design(settings: Any, keys, build) -> list[tuple[str, str]]:
    """Problems of a ``traditional:`` mapping: unknown keys, then whatever ``build`` (the design's constructor,
    called with the known keys) refuses."""
    if settings is None:
        return []
    out = unknown_keys("traditional", settings, keys)
    if out and not isinstance(settings, dict):
        return out
    try:
        build({k: v for k, v in settings.items() if k in keys})
    except (ValueError, TypeError) as exc:
        out.append(("traditional", str(exc)))
    return out
