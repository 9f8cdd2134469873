"""A small lme4-style formula interface: ``y ~ x1 + x2 + x1:x2 + (1 + x1 | g)``.

Supported on the right-hand side: ``+``, ``:`` (interaction), ``*`` (main effects and
interaction), ``1`` / ``0`` / ``-1`` (intercept on/off), and exactly one random-effects term
``(expr | group)`` (``||`` is refused: one unstructured covariance per grouping factor).
Inside the bar an intercept is implied unless ``0 +`` or ``- 1`` is written, as in lme4.

Columns: numeric (float, int) enter as they are; categorical (pandas ``Categorical``, object or
string, bool) use treatment coding with the *first declared level* as reference (the
``Categorical``'s category order; sorted unique values for object columns; ``False`` for bool),
named ``Var[T.level]`` as patsy does; without an intercept the first categorical main effect gets
one column per level, ``Var[level]``.  Categoricals inside interactions always use treatment
coding (patsy's rule of full coding when the main effect is absent is not reproduced: write the
main effect).  Fixed terms are ordered main effects first, then interactions, as R and patsy do.
Missing values raise :class:`LMMDataError` naming the column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import LMMDataError, LMMFormulaError

_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class ParsedFormula:
    response: str
    fixed_terms: tuple  # tuple of tuples of variable names; () is never a term
    fixed_intercept: bool
    re_terms: tuple
    re_intercept: bool
    group: str | None
    formula: str = ""


def _split_plus(expr: str):
    """Split an expression on top-level '+' and '-' into (sign, text) pairs."""
    out, depth, cur, sign = [], 0, "", "+"
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if depth == 0 and ch in "+-":
            if cur.strip():
                out.append((sign, cur.strip()))
            cur, sign = "", ch
            continue
        cur += ch
    if cur.strip():
        out.append((sign, cur.strip()))
    return out


def _terms(expr: str, formula: str):
    """Parse '1 + a + b*c - 1' into (intercept, ordered unique terms)."""
    intercept = True
    terms: list[tuple] = []
    for sign, tok in _split_plus(expr):
        if tok in ("1", "0"):
            if (tok == "1") == (sign == "-"):  # '- 1' or '+ 0'
                intercept = False
            continue
        if sign == "-":
            raise LMMFormulaError(f"formula {formula!r}: removing term '{tok}' is not supported")
        if "*" in tok:
            parts = [p.strip() for p in tok.split("*")]
            new = []
            # all non-empty subsets in patsy's order: mains first, then interactions by order
            k = len(parts)
            for size in range(1, k + 1):
                for mask in range(1, 1 << k):
                    if bin(mask).count("1") == size:
                        new.append(tuple(parts[i] for i in range(k) if mask >> i & 1))
        else:
            new = [tuple(p.strip() for p in tok.split(":"))]
        for t in new:
            for v in t:
                if not _NAME.match(v):
                    raise LMMFormulaError(
                        f"formula {formula!r}: '{v}' is not a column name (supported: names, "
                        "'+', ':', '*', '1', '0', '-1' and one '(expr | group)' term)"
                    )
            if t not in terms:
                terms.append(t)
    return intercept, tuple(terms)


def parse_formula(formula: str) -> ParsedFormula:
    if not isinstance(formula, str) or formula.count("~") != 1:
        raise LMMFormulaError(f"formula {formula!r}: expected one '~', e.g. 'y ~ x + (1 | group)'")
    lhs, rhs = (s.strip() for s in formula.split("~"))
    if not _NAME.match(lhs):
        raise LMMFormulaError(f"formula {formula!r}: response '{lhs}' must be a single column name")
    bars = re.findall(r"\(([^()]*\|[^()]*)\)", rhs)
    if len(bars) > 1:
        raise LMMFormulaError(
            f"formula {formula!r}: only one random-effects term '(... | group)' is supported, found {len(bars)}"
        )
    group = None
    re_int, re_terms = False, ()
    if bars:
        inner = bars[0]
        if "||" in inner:
            raise LMMFormulaError(f"formula {formula!r}: '||' (uncorrelated random effects) is not supported")
        expr, group = (s.strip() for s in inner.split("|"))
        if not _NAME.match(group):
            raise LMMFormulaError(f"formula {formula!r}: grouping factor '{group}' must be a column name")
        re_int, re_terms = _terms(expr, formula)
        rhs = rhs.replace(f"({inner})", "")
        rhs = re.sub(r"\+\s*\+", "+", rhs).strip().strip("+").strip()
    fx_int, fx_terms = _terms(rhs if rhs else "1", formula)
    fx_terms = tuple(sorted(fx_terms, key=len))  # main effects before interactions, as R/patsy
    return ParsedFormula(lhs, fx_terms, fx_int, re_terms, re_int, group, formula)


# --------------------------------------------------------------------------------------------
# design matrices
# --------------------------------------------------------------------------------------------
@dataclass
class Coding:
    """How one column enters: numeric, or categorical with its levels (first = reference)."""

    kind: str  # "num" | "cat"
    levels: tuple = ()


@dataclass
class DesignInfo:
    """Everything needed to rebuild X and Z on new data (``predict``) the same way."""

    parsed: ParsedFormula
    codings: dict = field(default_factory=dict)
    fe_names: list = field(default_factory=list)
    re_names: list = field(default_factory=list)
    full_rank_first_cat: dict = field(default_factory=dict)  # part -> var coded with all levels


def _coding_of(s: pd.Series, name: str) -> Coding:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return Coding("cat", tuple(s.cat.categories))
    if pd.api.types.is_bool_dtype(s.dtype):
        return Coding("cat", (False, True))
    if pd.api.types.is_numeric_dtype(s.dtype):
        return Coding("num")
    if pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype):
        vals = pd.unique(s.dropna())
        try:
            levels = tuple(sorted(vals))
        except TypeError:
            levels = tuple(vals)
        return Coding("cat", levels)
    raise LMMDataError(f"column '{name}': dtype {s.dtype} cannot enter a model (numeric or categorical expected)")


def _columns_of(var, data, coding: Coding, full: bool):
    s = data[var]
    if coding.kind == "num":
        return [var], [np.asarray(s, dtype=float)]
    vals = s.astype(object).to_numpy() if not isinstance(s.dtype, pd.CategoricalDtype) else s.to_numpy()
    levels = coding.levels
    unknown = set(pd.unique(s.dropna())) - set(levels)
    if unknown:
        raise LMMDataError(
            f"column '{var}': level(s) {sorted(map(str, unknown))} not among the levels seen when fitting {list(levels)}"
        )
    use = levels if full else levels[1:]
    names = [f"{var}[{lv}]" if full else f"{var}[T.{lv}]" for lv in use]
    cols = [(vals == lv).astype(float) for lv in use]
    return names, cols


def _part(terms, intercept, data, info: DesignInfo, part: str, n: int):
    names, cols = [], []
    if intercept:
        names.append("Intercept")
        cols.append(np.ones(n))
    full_var = info.full_rank_first_cat.get(part)
    for t in terms:
        sub_names, sub_cols = [""], [np.ones(n)]
        for v in t:
            c = info.codings[v]
            vn, vc = _columns_of(v, data, c, full=(len(t) == 1 and v == full_var))
            sub_names = [f"{a}:{b}" if a else b for a in sub_names for b in vn]
            sub_cols = [a * b for a in sub_cols for b in vc]
        names += sub_names
        cols += sub_cols
    M = np.column_stack(cols) if cols else np.empty((n, 0))
    return names, M


def variables(parsed: ParsedFormula):
    vs = [parsed.response]
    for t in parsed.fixed_terms + parsed.re_terms:
        for v in t:
            if v not in vs:
                vs.append(v)
    if parsed.group is not None and parsed.group not in vs:
        vs.append(parsed.group)
    return vs


def missing(s: pd.Series):
    """Boolean mask of the missing values of a column (None for a dtype that cannot hold any)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy() < 0
    a = s.to_numpy()
    return np.isnan(a) if a.dtype.kind in "fc" else (pd.isna(a) if a.dtype.kind == "O" else None)


def check_columns(data: pd.DataFrame, names, formula: str):
    if not isinstance(data, pd.DataFrame):
        raise LMMDataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    for v in names:
        if v not in data.columns:
            raise LMMDataError(f"formula {formula!r}: column '{v}' is not in the data (columns: {list(data.columns)})")
        miss = missing(data[v])
        if miss is not None and miss.any():
            raise LMMDataError(f"column '{v}' has {int(miss.sum())} missing value(s); drop or impute them before fitting")


def design_info(parsed: ParsedFormula, data) -> DesignInfo:
    """How each predictor of ``parsed`` enters for these ``data`` (a DataFrame, or a mapping of
    its columns): the predictors' :class:`Coding` and, where a part has no intercept, which
    categorical main effect takes all its levels; the column names are filled in by
    :func:`build_design`.  Data sets with equal codings get equal design columns (``fit_many``
    builds theirs together)."""
    info = DesignInfo(parsed)
    for v in variables(parsed):
        if v != parsed.response and v != parsed.group:
            info.codings[v] = _coding_of(data[v], v)
    for part, terms, icpt in (("fixed", parsed.fixed_terms, parsed.fixed_intercept),
                              ("random", parsed.re_terms, parsed.re_intercept)):
        if not icpt:
            for t in terms:
                if len(t) == 1 and info.codings[t[0]].kind == "cat":
                    info.full_rank_first_cat[part] = t[0]
                    break
    return info


def build_design(parsed: ParsedFormula, data: pd.DataFrame, info: DesignInfo | None = None, need_y=True,
                 checked=False):
    """Return (y, X, Z, group_values, info).  ``info`` given: reuse its codings (new data).
    ``checked``: the caller has run :func:`check_columns`' checks itself (``fit_many``, per
    data set of a stack)."""
    vs = variables(parsed)
    if not need_y:
        vs = vs[1:]
    if not checked:
        check_columns(data, vs, parsed.formula)
    n = len(data)
    if info is None:
        info = design_info(parsed, data)
    y = None
    if need_y:
        ys = data[parsed.response]
        if not pd.api.types.is_numeric_dtype(ys.dtype) or pd.api.types.is_bool_dtype(ys.dtype):
            raise LMMDataError(f"response column '{parsed.response}' must be numeric, got {ys.dtype}")
        y = np.asarray(ys, dtype=float)
    fe_names, X = _part(parsed.fixed_terms, parsed.fixed_intercept, data, info, "fixed", n)
    re_names, Z = _part(parsed.re_terms, parsed.re_intercept, data, info, "random", n)
    if not info.fe_names:
        info.fe_names, info.re_names = fe_names, re_names
    g = data[parsed.group].to_numpy() if parsed.group is not None else None
    return y, X, Z, g, info
