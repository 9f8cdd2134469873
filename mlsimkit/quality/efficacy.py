"""Machine-learning efficacy (Suk et al., section 3.4.3, eq. 11; TSTR vs TRTR, Hernandez et al. 2025).

For each variable as the target and the other variables as predictors:

* the **real** data are cut into ``folds`` folds **by school** (top-level unit; ``GroupKFold``);
* TRTR: a model trained on the real training folds is scored on the held-out real fold;
* TSTR: a model trained on the whole synthetic data set is scored on the same held-out real fold
  (one fit, reused across folds);
* score: R^2 for numerical targets, macro-F1 for category targets; efficacy
  ``= 1 - |TSTR - TRTR|`` averaged over folds and clipped to [0, 1].

Two models: a tree ensemble (histogram gradient boosting) and a random-intercept mixed model. The mixed
model is ``mlsimkit.lmm`` when that module is importable, otherwise a built-in closed-form REML fit of
the random-intercept linear model (profile likelihood in the variance ratio, computed from per-cluster sums;
checked against statsmodels MixedLM in the tests). Held-out schools are new clusters, so predictions use the
fixed effects only. For category targets the mixed model is a linear probability model per category
(the predicted class is the largest fitted value), which keeps it as fast as the numerical case.

Student-level targets are modelled on the student table with its school's variables joined on.
School-level targets are modelled on the school table with the school means of the student variables
(proportions for category columns) as extra predictors; at the top level the mixed model has no grouping
and reduces to least squares. Averages per level follow Table S2: student-level, school-level, overall
(the mean over all targets).

``mode="fast"`` (for the book build) uses 3 folds and a smaller ensemble.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import optimize
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import f1_score, r2_score
from sklearn.model_selection import GroupKFold

from ..data import MultilevelData
from ._common import kinds_of

SETTINGS = {
    "full": dict(folds=5, max_iter=100, models=("tree", "mixed")),
    "fast": dict(folds=3, max_iter=40, models=("tree", "mixed")),
}


# ------------------------------------------------------------------------------ random-intercept GLS
class RandomInterceptLM:
    """REML fit of ``y = X b + u_j + e``, ``u_j ~ N(0, tau2)``, ``e ~ N(0, sigma2)``; ``predict`` = ``X b``.

    With ``gamma = tau2 / sigma2``, ``V_j^{-1} sigma2 = I - w_j 11'`` with ``w_j = gamma / (1 + n_j gamma)``, so
    every quantity of the profiled REML criterion comes from per-cluster sums of X and y.
    """

    def fit(self, X: np.ndarray, y: np.ndarray, groups=None):
        X = np.column_stack([np.ones(len(y)), X])
        y = np.asarray(y, float)
        N, p = X.shape
        if groups is None:
            self.coef_ = np.linalg.lstsq(X, y, rcond=None)[0]
            self.gamma_ = 0.0
            return self
        codes, uniq = pd.factorize(pd.Series(groups))
        J = len(uniq)
        n = np.bincount(codes, minlength=J).astype(float)
        S = np.zeros((J, p))
        np.add.at(S, codes, X)
        t = np.bincount(codes, weights=y, minlength=J)
        XtX, Xty, yty = X.T @ X, X.T @ y, y @ y

        def parts(log_gamma):
            g = np.exp(log_gamma)
            w = g / (1 + n * g)
            A = XtX - (S * w[:, None]).T @ S
            b = Xty - S.T @ (w * t)
            try:
                beta = np.linalg.solve(A, b)
            except np.linalg.LinAlgError:
                beta = np.linalg.lstsq(A, b, rcond=None)[0]
            q = yty - np.sum(w * t**2) - b @ beta
            return g, A, beta, max(q, 1e-300)

        def crit(log_gamma):
            g, A, _, q = parts(log_gamma)
            sign, logdetA = np.linalg.slogdet(A)
            return (N - p) * np.log(q / (N - p)) + np.sum(np.log1p(n * g)) + logdetA

        res = optimize.minimize_scalar(crit, bounds=(-12, 6), method="bounded", options=dict(xatol=1e-6))
        g, _, beta, q = parts(res.x)
        self.coef_, self.gamma_ = beta, g
        self.sigma2_ = q / (N - p)
        self.tau2_ = g * self.sigma2_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(X)), X]) @ self.coef_


def _mixed_engine():
    try:
        from ..lmm import lmm  # noqa: F401

        return "mlsimkit.lmm"
    except Exception:
        return "builtin"


class _LmmAdapter:
    """Wraps ``mlsimkit.lmm`` behind fit(X, y, groups) / predict(X)."""

    def fit(self, X, y, groups=None):
        from ..lmm import lmm

        if groups is None:
            self._ols = RandomInterceptLM().fit(X, y)
            return self
        self._ols = None
        names = [f"x{i}" for i in range(X.shape[1])]
        df = pd.DataFrame(X, columns=names).assign(y=y, g=np.asarray(groups).astype(str))
        try:
            self._res = lmm("y ~ " + (" + ".join(names) if names else "1") + " + (1 | g)", data=df, reml=True)
        except Exception as exc:  # an engine still in development must not break Stage 3
            warnings.warn(f"mlsimkit.lmm failed ({exc!r}); using the built-in random-intercept fit", stacklevel=2)
            self._ols = RandomInterceptLM().fit(X, y, groups)
        self._names = names
        return self

    def predict(self, X):
        if self._ols is not None:
            return self._ols.predict(X)
        new = pd.DataFrame(X, columns=self._names).assign(g="__new__")
        return np.asarray(self._res.predict(new, include_re=False), float)


def _mixed(engine: str):
    return _LmmAdapter() if engine == "mlsimkit.lmm" else RandomInterceptLM()


# ------------------------------------------------------------------------------ data preparation
def _modelling_frame(data: MultilevelData, table: str) -> tuple[pd.DataFrame, dict, np.ndarray | None, np.ndarray]:
    """(frame, kinds, mixed-model groups, fold groups = top-level ids) for targets of ``table``."""
    schema = data.schema
    levels = schema.levels
    t = schema.tables[table]
    frame = data[table]
    kinds = dict(kinds_of(data, table))
    # ancestors' variables
    cur = t
    while cur.parent is not None:
        frame = frame.merge(data[cur.parent], on=cur.foreign_key, how="left", sort=False)
        kinds.update(kinds_of(data, cur.parent))
        cur = schema.tables[cur.parent]
    # the immediate child's variables as cluster means
    child = schema.child_of(table)
    if child is not None:
        ct = schema.tables[child]
        cdf = data[child]
        agg = {}
        for c, k in kinds_of(data, child).items():
            if k == "numerical":
                agg[f"mean_{c}"] = cdf.groupby(ct.foreign_key, observed=True, sort=False)[c].mean()
            else:
                for lev in cdf[c].cat.categories[1:]:
                    agg[f"share_{c}={lev}"] = (cdf[c] == lev).groupby(cdf[ct.foreign_key], sort=False).mean()
        agg = pd.DataFrame(agg)
        frame = frame.merge(agg, left_on=t.primary_key[0], right_index=True, how="left", sort=False)
        kinds.update({c: "numerical" for c in agg.columns})
    groups = frame[t.foreign_key].to_numpy() if t.parent is not None else None
    # fold groups: the top-level unit of each row
    if table == levels[0]:
        top = frame[t.primary_key[0]].to_numpy()
    else:
        top_key = schema.tables[levels[0]].primary_key[0]
        top = frame[top_key].to_numpy()
    return frame.reset_index(drop=True), kinds, groups, top


def _matrices(frame: pd.DataFrame, feats: dict, ref: pd.DataFrame):
    """Tree design (numbers + category codes) and mixed design (numbers + one-hot, first level dropped)."""
    tree, lin = [], []
    for c, k in feats.items():
        if k == "numerical":
            v = frame[c].to_numpy(float)
            tree.append(v[:, None])
            lin.append(v[:, None])
        else:
            cats = ref[c].cat.categories
            codes = pd.Categorical(frame[c], categories=cats).codes
            tree.append(codes[:, None].astype(float))
            lin.append((codes[:, None] == np.arange(1, len(cats))[None, :]).astype(float))
    cat_mask = np.array([k != "numerical" for k in feats.values()])
    return np.hstack(tree), np.hstack(lin) if lin else np.zeros((len(frame), 0)), cat_mask


def _score(kind, y_true, y_pred) -> float:
    if kind == "numerical":
        return float(r2_score(y_true, y_pred))
    return float(f1_score(y_true, y_pred, average="macro"))


def _fit_predict(model: str, kind: str, cats, Xtr_tree, Xtr_lin, ytr, gtr, Xte_tree, Xte_lin, cat_mask, cfg, engine, seed):
    if model == "tree":
        cm = cat_mask if cat_mask.any() else None
        if kind == "numerical":
            m = HistGradientBoostingRegressor(max_iter=cfg["max_iter"], early_stopping=False, categorical_features=cm,
                                              random_state=seed)
        else:
            m = HistGradientBoostingClassifier(max_iter=cfg["max_iter"], early_stopping=False, categorical_features=cm,
                                               random_state=seed)
        return m.fit(Xtr_tree, ytr).predict(Xte_tree)
    if kind == "numerical":
        return _mixed(engine).fit(Xtr_lin, ytr, gtr).predict(Xte_lin)
    # linear probability model per category; predicted class = largest fitted value
    fitted = np.column_stack([_mixed(engine).fit(Xtr_lin, (ytr == k).astype(float), gtr).predict(Xte_lin)
                              for k in range(len(cats))])
    return fitted.argmax(axis=1)


class _RealFolds:
    """Cached TRTR scores for one real data set (shared by every synthetic data set compared to it)."""

    def __init__(self, real: MultilevelData, cfg: dict, engine: str, seed: int):
        self.real, self.cfg, self.engine, self.seed = real, cfg, engine, seed
        self.frames = {t: _modelling_frame(real, t) for t in real.levels}
        self.cache = {}

    def targets(self):
        for table in self.real.levels:
            for c, k in kinds_of(self.real, table).items():
                yield table, c, k

    def folds(self, table):
        frame, _, _, top = self.frames[table]
        k = min(self.cfg["folds"], len(np.unique(top)))
        return list(GroupKFold(n_splits=k).split(frame, groups=top))

    def _xy(self, frame, feats, target, kind, ref):
        Xt, Xl, cm = _matrices(frame, feats, ref)
        y = frame[target].to_numpy(float) if kind == "numerical" else pd.Categorical(
            frame[target], categories=ref[target].cat.categories).codes
        return Xt, Xl, cm, y

    def trtr(self, table, target, kind, model):
        key = (table, target, model)
        if key in self.cache:
            return self.cache[key]
        frame, kinds, groups, _ = self.frames[table]
        feats = {c: k for c, k in kinds.items() if c != target}
        Xt, Xl, cm, y = self._xy(frame, feats, target, kind, frame)
        cats = frame[target].cat.categories if kind != "numerical" else None
        scores = []
        for tr, te in self.folds(table):
            g = groups[tr] if groups is not None else None
            pred = _fit_predict(model, kind, cats, Xt[tr], Xl[tr], y[tr], g, Xt[te], Xl[te], cm, self.cfg, self.engine, self.seed)
            scores.append(_score(kind, y[te], pred))
        self.cache[key] = scores
        return scores

    def tstr(self, syn: MultilevelData, syn_frames, table, target, kind, model):
        frame, kinds, groups, _ = self.frames[table]
        sframe, _, sgroups, _ = syn_frames[table]
        feats = {c: k for c, k in kinds.items() if c != target}
        Xt, Xl, cm, y = self._xy(frame, feats, target, kind, frame)
        St, Sl, _, ys = self._xy(sframe, feats, target, kind, frame)
        cats = frame[target].cat.categories if kind != "numerical" else None
        pred = _fit_predict(model, kind, cats, St, Sl, ys, sgroups, Xt, Xl, cm, self.cfg, self.engine, self.seed)
        return [_score(kind, y[te], pred[te]) for _, te in self.folds(table)]


def efficacy_rows(real: MultilevelData, syn: MultilevelData, *, mode: str = "full", targets=None, seed: int = 0,
                  engine: str | None = None, _cache: dict | None = None) -> list[dict]:
    """ML-efficacy rows: one per (target, model), plus the TRTR and TSTR scores as extra columns."""
    if mode not in SETTINGS:
        raise ValueError(f"efficacy mode must be one of {list(SETTINGS)}, got {mode!r}")
    cfg = SETTINGS[mode]
    engine = engine or _mixed_engine()
    key = (id(real), mode, engine, seed)
    if _cache is not None and key in _cache:
        folds = _cache[key]
    else:
        folds = _RealFolds(real, cfg, engine, seed)
        if _cache is not None:
            _cache[key] = folds
    syn_frames = {t: _modelling_frame(syn, t) for t in real.levels}
    rows = []
    for table, target, kind in folds.targets():
        if targets is not None and target not in targets:
            continue
        for model in cfg["models"]:
            tr = folds.trtr(table, target, kind, model)
            ts = folds.tstr(syn, syn_frames, table, target, kind, model)
            eff = float(np.mean([1 - abs(a - b) for a, b in zip(ts, tr)]))
            rows.append(dict(metric="ML efficacy", domain="ML efficacy", subdomain=model, level=table, variables=target,
                             value=float(np.clip(eff, 0, 1)), stat_real=float(np.mean(tr)), stat_syn=float(np.mean(ts)),
                             model=model, engine=engine if model == "mixed" else "sklearn-hgb"))
    return rows
