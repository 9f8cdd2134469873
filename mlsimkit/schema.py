"""Stage 1: the declarative schema of a multilevel data set (section 3.2 of Suk et al.).

A schema lists the tables (one per level: schools, students, ...), each table's primary key, its parent
table and the foreign key that points to it, and every column's *kind*:

``id``           a key (primary or foreign); kept as text
``numerical``    a number; optional ``min`` / ``max`` (inclusive) and ``integer: true``
``binary``       exactly two declared ``levels``
``categorical``  declared ``levels``, unordered
``ordinal``      declared ``levels``, in order

Example (the HSB schema shipped in ``mlsimkit/datasets/hsb/schema.yml``)::

    name: hsb
    missing: error            # or drop_rows: drop incomplete rows and say how many
    extra_columns: error      # or ignore: drop undeclared columns with a warning
    tables:
      schools:
        file: schools.csv
        primary_key: School
        columns:
          School: {kind: id}
          Sector: {kind: binary, levels: [Public, Catholic]}
      students:
        file: students.csv
        primary_key: Student
        parent: schools
        foreign_key: School
        columns: ...

Tables form a chain (LEA > school > student for three levels); every table but the top one has exactly
one parent. A data set may instead be stored as one join-as-one file (``join_as_one: chem97.csv``). ``obtain`` (optional) tells a user where to get data
that cannot be shipped; it is repeated in the error raised when a file is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .errors import SchemaError

KINDS = ("id", "numerical", "binary", "categorical", "ordinal")
CATEGORY_KINDS = ("binary", "categorical", "ordinal")
MISSING_POLICIES = ("error", "drop_rows")
EXTRA_COLUMN_POLICIES = ("error", "ignore")


@dataclass(frozen=True)
class Column:
    """One declared column."""

    name: str
    kind: str
    min: float | None = None
    max: float | None = None
    levels: tuple[str, ...] | None = None
    integer: bool = False
    description: str = ""

    @property
    def is_category(self) -> bool:
        return self.kind in CATEGORY_KINDS

    @property
    def is_numerical(self) -> bool:
        return self.kind == "numerical"


@dataclass(frozen=True)
class Table:
    """One level of the hierarchy."""

    name: str
    primary_key: tuple[str, ...]
    columns: dict[str, Column]
    parent: str | None = None
    foreign_key: str | None = None
    file: str | None = None
    description: str = ""

    @property
    def data_columns(self) -> list[str]:
        """Columns that are not keys (the variables a generator models)."""
        return [c.name for c in self.columns.values() if c.kind != "id"]

    @property
    def key_columns(self) -> list[str]:
        return [c.name for c in self.columns.values() if c.kind == "id"]


@dataclass(frozen=True)
class Schema:
    """A validated multilevel schema; build it with :meth:`from_yaml` or :meth:`from_dict`."""

    name: str
    tables: dict[str, Table]
    missing: str = "error"
    extra_columns: str = "error"
    join_as_one: str | None = None
    description: str = ""
    obtain: str = ""
    source: str | None = field(default=None, compare=False)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Schema":
        """Read a schema file."""
        path = Path(path)
        if not path.is_file():
            raise SchemaError(f"file '{path}': schema file not found")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SchemaError(f"file '{path}': not valid YAML ({exc})") from None
        return cls.from_dict(spec, source=str(path))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, source: str | None = None) -> "Schema":
        """Build a schema from a mapping with the layout of the module docstring."""
        src = f"file '{source}'" if source else "schema"
        if not isinstance(spec, Mapping):
            raise SchemaError(f"{src}: expected a mapping with keys 'name' and 'tables'")
        unknown = set(spec) - {"name", "tables", "missing", "extra_columns", "join_as_one", "description", "obtain"}
        if unknown:
            raise SchemaError(f"{src}: unknown top-level key(s) {sorted(unknown)}")
        name = spec.get("name")
        if not name:
            raise SchemaError(f"{src}: 'name' is required")
        missing = spec.get("missing", "error")
        if missing not in MISSING_POLICIES:
            raise SchemaError(f"{src}: 'missing' must be one of {MISSING_POLICIES}, got {missing!r}")
        extra = spec.get("extra_columns", "error")
        if extra not in EXTRA_COLUMN_POLICIES:
            raise SchemaError(f"{src}: 'extra_columns' must be one of {EXTRA_COLUMN_POLICIES}, got {extra!r}")
        raw_tables = spec.get("tables")
        if not isinstance(raw_tables, Mapping) or not raw_tables:
            raise SchemaError(f"{src}: 'tables' must be a non-empty mapping of table name to table spec")
        tables = {tname: _parse_table(tname, tspec, src) for tname, tspec in raw_tables.items()}
        schema = cls(
            name=str(name),
            tables=tables,
            missing=missing,
            extra_columns=extra,
            join_as_one=spec.get("join_as_one"),
            description=str(spec.get("description", "")).strip(),
            obtain=str(spec.get("obtain", "")).strip(),
            source=source,
        )
        schema._check_structure(src)
        return schema

    def _check_structure(self, src: str) -> None:
        roots = [t.name for t in self.tables.values() if t.parent is None]
        if len(roots) != 1:
            raise SchemaError(f"{src}: exactly one table must have no parent (the top level); found {roots}")
        for t in self.tables.values():
            if t.parent is None:
                continue
            if t.parent not in self.tables:
                raise SchemaError(f"{src}, table '{t.name}': parent '{t.parent}' is not a declared table")
            parent = self.tables[t.parent]
            if len(parent.primary_key) != 1:
                raise SchemaError(
                    f"{src}, table '{t.parent}': a parent table needs a single-column primary key, "
                    f"got {list(parent.primary_key)}"
                )
            if t.foreign_key != parent.primary_key[0]:
                raise SchemaError(
                    f"{src}, table '{t.name}': foreign_key must name the parent's primary key "
                    f"'{parent.primary_key[0]}', got {t.foreign_key!r}"
                )
        children = [t.parent for t in self.tables.values() if t.parent is not None]
        dup = {p for p in children if children.count(p) > 1}
        if dup:
            raise SchemaError(f"{src}: tables must form a chain; table(s) {sorted(dup)} have more than one child")
        # variable names must be unique across tables (keys may repeat as foreign keys)
        seen: dict[str, str] = {}
        for t in self.tables.values():
            for c in t.columns.values():
                if c.kind == "id":
                    continue
                if c.name in seen:
                    raise SchemaError(
                        f"{src}: column '{c.name}' is declared in tables '{seen[c.name]}' and '{t.name}'; "
                        "variable names must be unique across levels so the join-as-one table is well defined"
                    )
                seen[c.name] = t.name
        if self.join_as_one is None:
            for t in self.tables.values():
                if t.file is None:
                    raise SchemaError(f"{src}, table '{t.name}': 'file' is required unless 'join_as_one' is given")

    # ----------------------------------------------------------------- navigation
    @property
    def levels(self) -> list[str]:
        """Table names from the top level (e.g. schools) down to the bottom (students)."""
        order = [next(t.name for t in self.tables.values() if t.parent is None)]
        while True:
            child = [t.name for t in self.tables.values() if t.parent == order[-1]]
            if not child:
                return order
            order.append(child[0])

    @property
    def top(self) -> str:
        return self.levels[0]

    @property
    def bottom(self) -> str:
        return self.levels[-1]

    def child_of(self, table: str) -> str | None:
        for t in self.tables.values():
            if t.parent == table:
                return t.name
        return None

    def column(self, name: str) -> Column:
        """The declaration of a (non-key) variable, whichever table it lives in."""
        for t in self.tables.values():
            if name in t.columns:
                return t.columns[name]
        raise SchemaError(f"schema '{self.name}': column '{name}' is not declared in any table")

    def table_of(self, column: str) -> str:
        """The table a non-key variable belongs to."""
        for t in self.tables.values():
            if column in t.columns and t.columns[column].kind != "id":
                return t.name
        raise SchemaError(f"schema '{self.name}': column '{column}' is not a declared variable")

    def same_structure(self, other: "Schema") -> bool:
        """Same tables, keys, parents and column declarations (names, files, descriptions and policies
        may differ): data of one schema can stand for data of the other."""
        def key(sch):
            return [(t.name, t.primary_key, t.parent, t.foreign_key,
                     [(c.name, c.kind, c.min, c.max, c.levels, c.integer) for c in t.columns.values()])
                    for t in (sch.tables[n] for n in sch.levels)]
        return isinstance(other, Schema) and key(self) == key(other)

    def to_frame(self) -> pd.DataFrame:
        """The schema as a table: one row per column, with its level, kind, range and levels."""
        rows = []
        for t in (self.tables[n] for n in self.levels):
            for c in t.columns.values():
                role = ""
                if c.name in t.primary_key:
                    role = "primary key"
                elif c.name == t.foreign_key:
                    role = f"foreign key -> {t.parent}"
                rows.append(
                    {
                        "table": t.name,
                        "column": c.name,
                        "kind": c.kind,
                        "role": role,
                        "range": _fmt_range(c),
                        "levels": ", ".join(c.levels) if c.levels else "",
                        "description": c.description,
                    }
                )
        return pd.DataFrame(rows)

    def with_tables(self, tables: Mapping[str, Table]) -> "Schema":
        """A copy with some tables replaced (used by transformations such as the variable decomposition)."""
        new = dict(self.tables)
        new.update(tables)
        return replace(self, tables=new)

    def to_dict(self) -> dict:
        """The YAML-able mapping this schema was built from: :meth:`from_dict` gives back an equal schema
        (every field but ``source``, the file it was read from)."""
        out: dict[str, Any] = {"name": self.name, "missing": self.missing, "extra_columns": self.extra_columns}
        if self.join_as_one:
            out["join_as_one"] = self.join_as_one
        if self.description:
            out["description"] = self.description
        if self.obtain:
            out["obtain"] = self.obtain
        tables = {}
        for t in self.tables.values():
            td: dict[str, Any] = {"primary_key": list(t.primary_key) if len(t.primary_key) > 1 else t.primary_key[0]}
            if t.file:
                td["file"] = t.file
            if t.parent:
                td["parent"], td["foreign_key"] = t.parent, t.foreign_key
            if t.description:
                td["description"] = t.description
            cols = {}
            for c in t.columns.values():
                cd: dict[str, Any] = {"kind": c.kind}
                for key in ("min", "max"):
                    if getattr(c, key) is not None:
                        cd[key] = getattr(c, key)
                if c.levels:
                    cd["levels"] = list(c.levels)
                if c.integer:
                    cd["integer"] = True
                if c.description:
                    cd["description"] = c.description
                cols[c.name] = cd
            td["columns"] = cols
            tables[t.name] = td
        out["tables"] = tables
        return out


def _fmt_range(c: Column) -> str:
    if c.kind != "numerical" or (c.min is None and c.max is None):
        return ""
    lo = "-inf" if c.min is None else f"{c.min:g}"
    hi = "inf" if c.max is None else f"{c.max:g}"
    return f"[{lo}, {hi}]" + (" integer" if c.integer else "")


def _parse_table(tname: str, tspec: Any, src: str) -> Table:
    loc = f"{src}, table '{tname}'"
    if not isinstance(tspec, Mapping):
        raise SchemaError(f"{loc}: expected a mapping with 'primary_key' and 'columns'")
    unknown = set(tspec) - {"file", "primary_key", "parent", "foreign_key", "columns", "description"}
    if unknown:
        raise SchemaError(f"{loc}: unknown key(s) {sorted(unknown)}")
    cols_spec = tspec.get("columns")
    if not isinstance(cols_spec, Mapping) or not cols_spec:
        raise SchemaError(f"{loc}: 'columns' must be a non-empty mapping of column name to spec")
    columns = {str(cname): _parse_column(str(cname), cspec, loc) for cname, cspec in cols_spec.items()}
    pk = tspec.get("primary_key")
    if pk is None:
        raise SchemaError(f"{loc}: 'primary_key' is required")
    pk = tuple(str(k) for k in (pk if isinstance(pk, (list, tuple)) else [pk]))
    for k in pk:
        if k not in columns:
            raise SchemaError(f"{loc}: primary key column '{k}' is not declared under 'columns'")
        if columns[k].kind != "id":
            raise SchemaError(f"{loc}, column '{k}': a primary key column must have kind 'id'")
    parent = tspec.get("parent")
    fk = tspec.get("foreign_key")
    if (parent is None) != (fk is None):
        raise SchemaError(f"{loc}: 'parent' and 'foreign_key' must be given together")
    if fk is not None:
        fk = str(fk)
        if fk not in columns:
            raise SchemaError(f"{loc}: foreign key column '{fk}' is not declared under 'columns'")
        if columns[fk].kind != "id":
            raise SchemaError(f"{loc}, column '{fk}': a foreign key column must have kind 'id'")
    return Table(
        name=tname,
        primary_key=pk,
        columns=columns,
        parent=None if parent is None else str(parent),
        foreign_key=fk,
        file=tspec.get("file"),
        description=str(tspec.get("description", "")).strip(),
    )


_COLUMN_KEYS = frozenset({"kind", "min", "max", "levels", "integer", "description"})


def _parse_column(cname: str, cspec: Any, loc: str) -> Column:
    loc = f"{loc}, column '{cname}'"
    if isinstance(cspec, str):
        cspec = {"kind": cspec}
    if not isinstance(cspec, Mapping):
        raise SchemaError(f"{loc}: expected a mapping with at least 'kind'")
    if not _COLUMN_KEYS.issuperset(cspec):
        raise SchemaError(f"{loc}: unknown key(s) {sorted(set(cspec) - _COLUMN_KEYS)}")
    kind = cspec.get("kind")
    if kind not in KINDS:
        raise SchemaError(f"{loc}: 'kind' must be one of {KINDS}, got {kind!r}")
    levels = cspec.get("levels")
    if kind in CATEGORY_KINDS:
        if not isinstance(levels, (list, tuple)) or len(levels) < 2:
            raise SchemaError(f"{loc}: a {kind} column needs 'levels', a list of at least two categories")
        levels = tuple(str(v) for v in levels)
        if len(set(levels)) != len(levels):
            raise SchemaError(f"{loc}: 'levels' contains duplicates: {list(levels)}")
        if kind == "binary" and len(levels) != 2:
            raise SchemaError(f"{loc}: a binary column needs exactly two levels, got {list(levels)}")
    elif levels is not None:
        raise SchemaError(f"{loc}: 'levels' is only allowed for binary, categorical and ordinal columns")
    lo, hi = cspec.get("min"), cspec.get("max")
    if (lo is not None or hi is not None or cspec.get("integer")) and kind != "numerical":
        raise SchemaError(f"{loc}: 'min', 'max' and 'integer' are only allowed for numerical columns")
    for key, val in (("min", lo), ("max", hi)):
        if val is not None and not isinstance(val, (int, float)):
            raise SchemaError(f"{loc}: '{key}' must be a number, got {val!r}")
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"{loc}: 'min' ({lo}) is larger than 'max' ({hi})")
    return Column(
        name=cname,
        kind=kind,
        min=None if lo is None else float(lo),
        max=None if hi is None else float(hi),
        levels=levels,
        integer=bool(cspec.get("integer", False)),
        description=str(cspec.get("description", "")).strip(),
    )
