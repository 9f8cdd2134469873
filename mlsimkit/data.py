"""Stage 1: the multilevel data object, its validation, and the join-as-one table (section 3.2).

:class:`MultilevelData` holds one pandas table per level (schools, students, ...) together with its
:class:`~mlsimkit.schema.Schema`. Columns are typed by their kind: ``id`` columns are text, ``numerical``
columns ``float64``, ``binary`` / ``categorical`` / ``ordinal`` columns pandas ``Categorical`` with the
declared levels (ordered for ordinal). The object converts losslessly to and from the join-as-one table,
in which every student row carries its school's (and district's, ...) variables.

Validation collects every problem it finds and raises one :class:`~mlsimkit.errors.DataValidationError`
whose lines each name the file, table and column and say what was expected. Choices:

* an undeclared column is an **error** (``extra_columns: error``), because a silently ignored column is
  usually a typo in the schema; ``extra_columns: ignore`` drops it with a warning instead;
* missing values are an **error** (``missing: error``); ``missing: drop_rows`` drops incomplete rows,
  then the children of dropped parents and the parents left without children, warning with counts;
* a constant (non-key) column is an error: it carries no information and breaks correlations and ICCs;
* a parent without children is an error: a school with no students cannot be modelled.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from .errors import DataValidationError, where
from .io import atomic_path, write_text
from .schema import Schema, Table

NA_TOKENS = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "."]
_MAX_SHOWN = 5


class MultilevelData:
    """Tables of a multilevel data set, typed and validated against a schema.

    Parameters
    ----------
    schema : Schema
    tables : mapping of table name to DataFrame
        One frame per table of the schema.
    validate : bool
        Check and type the tables (default). ``False`` trusts the caller (frames already typed by this
        class, e.g. inside a generator's sampling loop).
    files : mapping of table name to file path, optional
        Used only to name files in error messages.
    """

    def __init__(
        self,
        schema: Schema,
        tables: Mapping[str, pd.DataFrame],
        *,
        validate: bool = True,
        files: Mapping[str, str] | None = None,
    ):
        self.schema = schema
        missing = [t for t in schema.tables if t not in tables]
        if missing:
            raise DataValidationError(f"data set '{schema.name}': no frame given for table(s) {missing}")
        if validate:
            self.tables = _validate_tables(schema, tables, files or {})
        else:
            self.tables = {name: tables[name] for name in schema.levels}

    # ----------------------------------------------------------------- access
    def __getitem__(self, table: str) -> pd.DataFrame:
        return self.tables[table]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {len(self.tables[n])} rows" for n in self.schema.levels)
        return f"MultilevelData('{self.schema.name}'; {shapes})"

    def _repr_markdown_(self) -> str:
        """How a notebook shows the data to a reader: one sentence per table, from the top level down."""
        parts = [f"**{self.schema.name}**, {len(self.schema.levels)} levels:"]
        for level in self.schema.levels:
            t = self.schema.tables[level]
            cols = len(self.tables[level].columns)
            parts.append(f"- `{level}`: {len(self.tables[level]):,} rows, {cols} columns"
                         + (f", each row in one of the `{t.parent}`" if t.parent else ""))
        return "\n".join(parts)

    @property
    def levels(self) -> list[str]:
        return self.schema.levels

    @property
    def parent(self) -> pd.DataFrame:
        """The table one level above the bottom (the school table in a two-level design)."""
        return self.tables[self.levels[-2]]

    @property
    def child(self) -> pd.DataFrame:
        """The bottom table (students)."""
        return self.tables[self.levels[-1]]

    @property
    def cluster_key(self) -> str:
        """The foreign key of the bottom table (e.g. ``School``)."""
        return self.schema.tables[self.schema.bottom].foreign_key

    @property
    def n_clusters(self) -> int:
        return len(self.parent)

    def cluster_sizes(self, table: str | None = None) -> pd.Series:
        """Number of child rows per parent row for ``table``'s relation to its parent (default: bottom)."""
        t = self.schema.tables[table or self.schema.bottom]
        if t.parent is None:
            raise DataValidationError(f"table '{t.name}' has no parent, so it has no cluster sizes")
        return self.tables[t.name].groupby(t.foreign_key, observed=True, sort=False).size().rename("size")

    def subset(self, top_ids: Iterable) -> "MultilevelData":
        """The data restricted to some top-level units (e.g. schools) and everything below them."""
        keep = {self.schema.top: set(map(str, top_ids))}
        tables = {}
        for name in self.levels:
            t = self.schema.tables[name]
            df = self.tables[name]
            mask = df[t.foreign_key].isin(keep[t.parent]) if t.parent else df[t.primary_key[0]].isin(keep[name])
            tables[name] = df.loc[mask].reset_index(drop=True)
            if len(t.primary_key) == 1:
                keep[name] = set(tables[name][t.primary_key[0]])
        return MultilevelData(self.schema, tables, validate=False)

    def equals(self, other: "MultilevelData") -> bool:
        """Same tables, keys and columns, and the same rows in every table (row order and file names
        ignored)."""
        if not self.schema.same_structure(other.schema):
            return False
        for name in self.levels:
            a, b = (_sorted(d.tables[name], self.schema.tables[name]) for d in (self, other))
            if not a.equals(b):
                return False
        return True

    # ----------------------------------------------------------------- join-as-one
    def join_as_one(self) -> pd.DataFrame:
        """One row per bottom-level unit carrying every ancestor's variables (section 3.2)."""
        levels = self.levels
        out = self.tables[levels[-1]]
        for child_name, parent_name in zip(levels[::-1], levels[-2::-1]):
            fk = self.schema.tables[child_name].foreign_key
            out = out.merge(self.tables[parent_name], on=fk, how="left", validate="many_to_one", sort=False)
        return out

    @classmethod
    def from_join_as_one(cls, frame: pd.DataFrame, schema: Schema, *, file: str | None = None) -> "MultilevelData":
        """Split a join-as-one table into the schema's tables.

        Each upper-level variable must be constant within its unit (a school-level variable may not vary
        within one school); every violation is reported.
        """
        frame = frame.copy()
        problems: list[str] = []
        declared = {c for t in schema.tables.values() for c in t.columns}
        _check_columns(frame, declared, schema, problems, file, table="join-as-one")
        if schema.extra_columns == "ignore":
            frame = frame[[c for c in frame.columns if c in declared]]
        if problems:
            raise _error(schema, problems)
        tables = {}
        for name in schema.levels:
            t = schema.tables[name]
            cols = list(t.columns)
            sub = frame[cols]
            if name != schema.bottom:
                key = t.primary_key[0]
                keyed = sub.astype(str).where(sub.notna(), "<missing>")
                for col in cols:
                    if col == key:
                        continue
                    nun = keyed.groupby(key, sort=False)[col].nunique()
                    bad = nun[nun > 1]
                    if len(bad):
                        unit = bad.index[0]
                        vals = sorted(keyed.loc[keyed[key] == unit, col].unique())[:_MAX_SHOWN]
                        problems.append(
                            f"{where(file, name, col)}: a {name}-level variable varies within "
                            f"{len(bad)} {name} unit(s) of the join-as-one table, e.g. {key}={unit!r} has "
                            f"values {vals}; it must be constant within each unit"
                        )
                sub = sub.drop_duplicates(subset=[key], keep="first")
            tables[name] = sub.reset_index(drop=True)
        if problems:
            raise _error(schema, problems)
        return cls(schema, tables, files={n: file for n in schema.levels} if file else None)

    # ----------------------------------------------------------------- files
    @classmethod
    def from_csv(cls, directory: str | Path) -> "MultilevelData":
        """Read a folder written by :meth:`to_csv` (its ``schema.yml`` and one CSV per table)."""
        return read_csv(Schema.from_yaml(Path(directory) / "schema.yml"), directory)

    def to_csv(self, directory: str | Path) -> dict[str, Path]:
        """Write one CSV per table (``<table>.csv``) and the schema (``schema.yml``), each atomically.

        ``read_csv(Schema.from_yaml(directory / "schema.yml"), directory)`` reads the same data back.
        """
        directory = Path(directory)
        out = {}
        tables = {}
        for name in self.levels:
            fname = f"{name}.csv"
            with atomic_path(directory / fname) as tmp:
                self.tables[name].to_csv(tmp, index=False)
            out[name] = directory / fname
            tables[name] = replace(self.schema.tables[name], file=fname)
        schema = replace(self.schema.with_tables(tables), join_as_one=None)
        out["schema"] = write_text(directory / "schema.yml", yaml.safe_dump(schema.to_dict(), sort_keys=False))
        return out


# ===================================================================== reading and validation
def read_csv(schema: Schema, directory: str | Path) -> MultilevelData:
    """Read the files a schema names from ``directory`` and validate them."""
    directory = Path(directory)
    if schema.join_as_one:
        path = directory / schema.join_as_one
        _require_file(path, schema)
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=NA_TOKENS)
        return MultilevelData.from_join_as_one(raw, schema, file=str(path))
    frames, files = {}, {}
    for name in schema.levels:
        path = directory / schema.tables[name].file
        _require_file(path, schema, name)
        frames[name] = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=NA_TOKENS)
        files[name] = str(path)
    return MultilevelData(schema, frames, files=files)


def _require_file(path: Path, schema: Schema, table: str | None = None) -> None:
    if not path.is_file():
        raise DataValidationError(
            f"{where(str(path), table)}: file not found (data set '{schema.name}'"
            + (f", declared as the file of table '{table}')" if table else ", declared as join_as_one)")
            + (f". {schema.obtain}" if schema.obtain else "")
        )


def _error(schema: Schema, problems: list[str]) -> DataValidationError:
    head = f"data set '{schema.name}': {len(problems)} problem(s):\n  - "
    err = DataValidationError(head + "\n  - ".join(problems))
    err.problems = problems
    return err


def _rows(index: Iterable, file: str | None) -> str:
    """Describe offending rows: file line numbers when read from a file, else row positions."""
    idx = list(index)
    shown = [int(i) + 2 for i in idx[:_MAX_SHOWN]] if file else [int(i) for i in idx[:_MAX_SHOWN]]
    label = "line(s)" if file else "row(s)"
    more = f" and {len(idx) - _MAX_SHOWN} more" if len(idx) > _MAX_SHOWN else ""
    return f"{label} {shown}{more}"


def _check_columns(frame, declared, schema, problems, file, table) -> None:
    tname = None if table == "join-as-one" else table
    for col in declared:
        if col not in frame.columns:
            problems.append(f"{where(file, tname, col)}: declared column is missing from the data")
    for col in frame.columns:
        if col not in declared:
            if schema.extra_columns == "error":
                problems.append(
                    f"{where(file, tname, col)}: column is not declared in the schema "
                    "(declare it, drop it, or set extra_columns: ignore)"
                )
            else:
                warnings.warn(f"{where(file, tname, col)}: undeclared column ignored", stacklevel=4)


def _validate_tables(schema: Schema, frames: Mapping[str, pd.DataFrame], files: Mapping[str, str]) -> dict:
    problems: list[str] = []
    typed: dict[str, pd.DataFrame] = {}
    for name in schema.levels:
        t = schema.tables[name]
        file = files.get(name)
        frame = frames[name]
        n_before = len(problems)
        _check_columns(frame, set(t.columns), schema, problems, file, name)
        if len(problems) > n_before:
            continue
        frame = frame[list(t.columns)].reset_index(drop=True)
        frame = _handle_missing(frame, t, schema, problems, file)
        typed[name] = _coerce(frame, t, problems, file)
    if problems:
        raise _error(schema, problems)
    if schema.missing == "drop_rows":
        typed = _cascade_drops(schema, typed)
    for name in schema.levels:
        t = schema.tables[name]
        file = files.get(name)
        df = typed[name]
        dup = df.duplicated(subset=list(t.primary_key), keep=False)
        if dup.any():
            first = df.loc[dup, list(t.primary_key)].iloc[0].tolist()
            problems.append(
                f"{where(file, name, ', '.join(t.primary_key))}: duplicate primary key, "
                f"{int(dup.sum())} rows share a key (e.g. {first}) at {_rows(np.flatnonzero(dup), file)}; "
                "each row needs a unique key"
            )
        if t.parent is not None and t.parent in typed:
            parent = schema.tables[t.parent]
            pkeys = typed[t.parent][parent.primary_key[0]]
            orphan = ~df[t.foreign_key].isin(pkeys)
            if orphan.any():
                ex = sorted(df.loc[orphan, t.foreign_key].unique())[:_MAX_SHOWN]
                problems.append(
                    f"{where(file, name, t.foreign_key)}: {int(orphan.sum())} row(s) point to a {t.parent} "
                    f"that does not exist in table '{t.parent}' (e.g. {ex}) at {_rows(np.flatnonzero(orphan), file)}"
                )
            childless = ~pkeys.isin(df[t.foreign_key])
            if childless.any():
                ex = sorted(pkeys[childless])[:_MAX_SHOWN]
                problems.append(
                    f"{where(files.get(t.parent), t.parent, parent.primary_key[0])}: {int(childless.sum())} "
                    f"{t.parent} row(s) have no rows in table '{name}' (e.g. {ex}); every parent needs a child"
                )
    if problems:
        raise _error(schema, problems)
    return typed


def _handle_missing(frame: pd.DataFrame, t: Table, schema: Schema, problems, file) -> pd.DataFrame:
    na = frame.isna()
    if not na.values.any():
        return frame
    if schema.missing == "error":
        for col in frame.columns[na.any().values]:
            problems.append(
                f"{where(file, t.name, col)}: {int(na[col].sum())} missing value(s) at "
                f"{_rows(np.flatnonzero(na[col]), file)}; the schema's policy is missing: error "
                "(fill them, or set missing: drop_rows to drop incomplete rows)"
            )
        return frame
    bad = na.any(axis=1)
    counts = {c: int(na[c].sum()) for c in frame.columns[na.any().values]}
    warnings.warn(
        f"{where(file, t.name)}: dropped {int(bad.sum())} of {len(frame)} rows with missing values "
        f"(missing per column: {counts}; policy missing: drop_rows)",
        stacklevel=4,
    )
    return frame.loc[~bad].reset_index(drop=True)


def _cascade_drops(schema: Schema, typed: dict) -> dict:
    """Under ``missing: drop_rows``, drop children of dropped parents and parents left without children."""
    changed = True
    while changed:
        changed = False
        for name in schema.levels:
            t = schema.tables[name]
            if t.parent is None:
                continue
            pk = schema.tables[t.parent].primary_key[0]
            child, parent = typed[name], typed[t.parent]
            orphan = ~child[t.foreign_key].isin(parent[pk])
            childless = ~parent[pk].isin(child[t.foreign_key])
            if orphan.any():
                warnings.warn(f"table '{name}': dropped {int(orphan.sum())} rows whose {t.parent} was dropped")
                typed[name] = child.loc[~orphan].reset_index(drop=True)
                changed = True
            if childless.any():
                warnings.warn(f"table '{t.parent}': dropped {int(childless.sum())} rows left without {name} rows")
                typed[t.parent] = parent.loc[~childless].reset_index(drop=True)
                changed = True
    return typed


def _as_text(s: pd.Series) -> pd.Series:
    """Values as text; integral floats print without '.0' so that 1.0 matches a declared level '1'."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    if pd.api.types.is_bool_dtype(s):
        return s.map(lambda v: str(v) if pd.notna(v) else v)
    if pd.api.types.is_numeric_dtype(s):
        vals = s.to_numpy(dtype=float)
        finite = vals[np.isfinite(vals)]
        if finite.size and np.all(finite == np.round(finite)):
            return s.map(lambda v: str(int(v)) if pd.notna(v) else v)
    return s.map(lambda v: str(v) if pd.notna(v) else v)


def _coerce(frame: pd.DataFrame, t: Table, problems: list, file) -> pd.DataFrame:
    out = {}
    for name, col in t.columns.items():
        s = frame[name]
        if col.kind == "id":
            out[name] = _as_text(s).astype(object)
        elif col.kind == "numerical":
            num = pd.to_numeric(s, errors="coerce").astype(float)
            text = num.isna() & s.notna()
            if text.any():
                ex = list(dict.fromkeys(map(str, s[text])))[:_MAX_SHOWN]
                problems.append(
                    f"{where(file, t.name, name)}: numerical column holds text {ex} at "
                    f"{_rows(np.flatnonzero(text), file)}; expected numbers"
                )
                out[name] = num
                continue
            lo = -np.inf if col.min is None else col.min
            hi = np.inf if col.max is None else col.max
            out_of = (num < lo) | (num > hi)
            if out_of.any():
                ex = num[out_of].unique()[:_MAX_SHOWN].tolist()
                problems.append(
                    f"{where(file, t.name, name)}: {int(out_of.sum())} value(s) outside the declared range "
                    f"[{lo:g}, {hi:g}] (e.g. {ex}) at {_rows(np.flatnonzero(out_of), file)}"
                )
            if col.integer:
                frac = num.notna() & (num != np.round(num))
                if frac.any():
                    problems.append(
                        f"{where(file, t.name, name)}: declared integer but holds non-integer values "
                        f"at {_rows(np.flatnonzero(frac), file)}"
                    )
            out[name] = num
        else:
            text = _as_text(s)
            undeclared = text.notna() & ~text.isin(col.levels)
            if undeclared.any():
                ex = list(dict.fromkeys(text[undeclared]))[:_MAX_SHOWN]
                problems.append(
                    f"{where(file, t.name, name)}: categories {ex} are not among the declared levels "
                    f"{list(col.levels)} at {_rows(np.flatnonzero(undeclared), file)}"
                )
            out[name] = pd.Categorical(text, categories=list(col.levels), ordered=col.kind == "ordinal")
        if col.kind != "id" and len(frame) > 1:
            vals = pd.Series(out[name]).dropna()
            if vals.nunique() == 1:
                problems.append(
                    f"{where(file, t.name, name)}: constant column (every row is {vals.iloc[0]!r}); "
                    "a constant variable carries no information: drop it from the schema and the data"
                )
    return pd.DataFrame(out)


def _sorted(df: pd.DataFrame, t: Table) -> pd.DataFrame:
    return df.sort_values(list(t.primary_key), kind="stable").reset_index(drop=True)

