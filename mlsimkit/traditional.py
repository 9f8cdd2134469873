"""The traditional (researcher-specified) data-generating processes of the two demonstrations.

Both follow the generator protocol of :mod:`mlsimkit.generators.base` (``sample(n_clusters, *, seed)``
returns a :class:`~mlsimkit.data.MultilevelData` with a proper schema; ``fit`` is a no-op because nothing
is learned), so the analyse callables of :mod:`mlsimkit.demonstrations` work on them unchanged. Sampling
is vectorised numpy: 500 schools take a few milliseconds.

:class:`AfshartousDeLeeuw` — Demonstration 1 (Afshartous & de Leeuw 2005, JEBS 30(2))
    ``beta_0j = g00 + g01 W_j + u_0j``, ``beta_1j = g10 + g11 W_j + u_1j``,
    ``Y_ij = beta_0j + beta_1j X_ij + e_ij``, all ``g = 1``; ``W_j, X_ij ~ N(0, 1)`` independent;
    ``(u_0j, u_1j) ~ N(0, [[tau00, tau01], [tau01, tau11]])`` with ``tau11 = tau00`` and
    ``tau01 = r tau00`` (so ``r`` is the intercept-slope correlation); ``e_ij ~ N(0, sigma2)``; balanced
    schools of ``n_per_school`` students (25 in the baseline that Suk et al. replicate).

    The ICC is the *intercept-only* definition the design uses: ``ICC = tau00 / (tau00 + sigma2)``, the
    share of the residual variance at ``X = 0`` that lies between schools (it ignores the variance that
    ``W`` and ``X`` explain and the slope variance). Hence ``tau00 = ICC sigma2 / (1 - ICC)``; the baseline
    ICC 0.2 gives ``tau00 = sigma2 / 4``.

    ``sigma2``: the JEBS paper states ``sigma2 = 0.5``; the companion paper (Afshartous & de Leeuw 2005,
    Communications in Statistics - Simulation and Computation 34, "Decomposition of prediction error in
    multilevel models") uses 0.25 for the same design. Both are supported; the **default is 0.5**, the value
    of the paper Suk et al. cite and replicate. With the ICC fixed, ``sigma2`` sets the size of every random
    part relative to the fixed part (the ``g`` stay 1). Since the outcome is then ``fixed part +
    sqrt(sigma2) x (a draw that does not depend on sigma2)`` and all three rules are equivariant under
    ``y -> a y + X b`` (OLS and ML/REML alike), every PMSE scales exactly with ``sigma2`` in distribution:
    ratios of PMSEs and the ranking of the rules are the same under 0.5 and 0.25. ``r`` defaults to 0.25 (a moderate positive intercept-slope
    correlation; 0 gives independent effects).

    Every published parameter can be set (``traditional:`` in a params file): ``tau00`` and ``tau11`` directly
    instead of ``icc`` (then ``tau11`` defaults to ``tau00``), ``sigma2``, ``r``, ``gamma`` and ``n_per_school``.
    Held-out students: Afshartous & de Leeuw fit on ``n`` students per school and predict one *additional*
    student generated from the same school (``n + 1`` generated); ``extra_holdout=True`` does that.
    The default (``False``) generates ``n_per_school`` students and holds one of them out (``n - 1`` for
    fitting), which is what the shipped studies ran so far.

:class:`HuangOmittedVariable` — Demonstration 2 (Huang 2018, as described in Suk et al. section 5.4)
    Two school predictors ``(W1_j, W2_j)`` bivariate normal with correlation ``rho_w``; ``W2`` is the one the
    four analysis models omit. A student predictor ``X_ij`` correlated ``rho_xw`` with ``W2_j``::

        X_ij = mu_x + sd_x (rho_xw Z2_j + sqrt(icc_x - rho_xw^2) v_j + sqrt(1 - icc_x) e_ij)

    with ``Z2`` the standardised ``W2`` and ``v, e ~ N(0, 1)``; ``icc_x`` (the ICC of ``X``) defaults to
    ``rho_xw^2`` (X's only school-level part is its link to W2). Unbalanced schools: sizes uniform on the
    integers ``cluster_size = (10, 30)`` (mean 20, as "unbalanced around an average of 20"). Outcome
    ``Y_ij = g0 + gx X_ij + g1 W1_j + g2 W2_j + u_j + e_ij``, ``u ~ N(0, tau00)``, ``e ~ N(0, sigma2)``.

    The paper's coefficients are 5 (student) and 2 (school, both school predictors); its correlations and
    variances were lost in extraction, so ours are choices: ``rho_w = 0.4`` and ``rho_xw = 0.3`` (moderate
    confounding, of the order of HSB's student-level correlation of socio-economic status with disciplinary
    climate, -0.19, and weaker than HSB's school-level correlation of climate with the academic-track share, -0.61: a
    "researcher-chosen" design, not a data-driven one), ``tau00 = 1``, ``sigma2 = 4`` (residual ICC 0.2, the
    ICC of Demonstration 1), intercept 0.

    :meth:`HuangOmittedVariable.from_real` builds the adjusted variant of appendix S5.2: coefficients,
    variance components, means, standard deviations, the school-level correlation of the observed with the
    omitted school predictor, the student-level correlation of the student predictor with the omitted one,
    and the student predictor's ICC, all taken from the real data and its true-model fit (the params file
    says which real columns play X, W1 and W2).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .data import MultilevelData
from .errors import MlsimkitError
from .generators.base import Generator, as_rng, make_ids
from .schema import Schema


def _schema(name: str, school_cols: Mapping[str, str], student_cols: Mapping[str, str], description: str) -> Schema:
    return Schema.from_dict({
        "name": name,
        "description": description,
        "tables": {
            "schools": {
                "file": "schools.csv", "primary_key": "School",
                "columns": {"School": {"kind": "id"}, **{c: {"kind": "numerical", "description": d} for c, d in school_cols.items()}},
            },
            "students": {
                "file": "students.csv", "primary_key": "Student", "parent": "schools", "foreign_key": "School",
                "columns": {"Student": {"kind": "id"}, "School": {"kind": "id"},
                            **{c: {"kind": "numerical", "description": d} for c, d in student_cols.items()}},
            },
        },
    })


def _tables(schema: Schema, school_vals: dict, student_vals: dict, groups: np.ndarray, n_clusters: int) -> MultilevelData:
    sid = make_ids("S", n_clusters)
    schools = pd.DataFrame({"School": sid, **{k: np.asarray(v, float) for k, v in school_vals.items()}})
    students = pd.DataFrame({"Student": make_ids("P", groups.size), "School": sid[groups],
                             **{k: np.asarray(v, float) for k, v in student_vals.items()}})
    return MultilevelData(schema, {"schools": schools, "students": students}, validate=False)


def _check_prob(name, v, lo=0.0, hi=1.0, closed_hi=False):
    ok = lo <= v <= hi if closed_hi else lo <= v < hi
    if not ok:
        raise MlsimkitError(f"parameter '{name}': expected a value in [{lo}, {hi}{']' if closed_hi else ')'}, got {v!r}")


def _correlated(rng, J: int, tau: np.ndarray) -> np.ndarray:
    """``J`` draws of the random effects with covariance ``tau`` (zero variances allowed)."""
    if tau[0, 0] > 0 and tau[1, 1] > 0:
        return rng.standard_normal((J, 2)) @ np.linalg.cholesky(tau).T
    if tau[0, 0] == 0 and tau[1, 1] == 0:
        return np.zeros((J, 2))
    z = rng.standard_normal((J, 2))
    return z * np.sqrt(np.diag(tau))  # a zero variance: that effect is 0, the other independent


class AfshartousDeLeeuw(Generator):
    """Demonstration 1's traditional design (see the module docstring).

    Parameters
    ----------
    n_per_school : int
        Students per school (balanced), default 25.
    icc : float or None
        ``tau00 / (tau00 + sigma2)``; default 0.2 unless ``tau00`` is given (giving both is an error).
    sigma2 : float
        Level-1 variance, default 0.5 (JEBS text); 0.25 reproduces the companion paper.
    r : float
        Correlation of the intercept and slope effects, ``tau01 = r tau00``; default 0.25.
    gamma : 4 floats
        ``(g00, g01, g10, g11)``, default all 1.
    tau00, tau11 : float or None
        Intercept and slope variances; ``tau00`` replaces ``icc`` (give one of them), ``tau11`` defaults to
        ``tau00``.
    extra_holdout : bool
        Generate ``n_per_school + 1`` students per school, so that ``n_per_school`` remain for fitting when
        one is held out (their paper); default ``False`` (``n_per_school`` generated).
    """

    name = "afshartous-deleeuw"

    def __init__(self, n_per_school: int = 25, icc: float | None = None, sigma2: float = 0.5, r: float = 0.25,
                 gamma: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0), *, tau00: float | None = None,
                 tau11: float | None = None, extra_holdout: bool = False):
        if tau00 is not None:
            if icc is not None:
                raise MlsimkitError(f"parameters 'icc' ({icc!r}) and 'tau00' ({tau00!r}): give one of them, not both "
                                    "(tau00 = icc * sigma2 / (1 - icc))")
            if not tau00 >= 0:
                raise MlsimkitError(f"parameter 'tau00': expected a variance >= 0, got {tau00!r}")
        elif icc is None:
            icc = 0.2
        if tau11 is not None and not tau11 >= 0:
            raise MlsimkitError(f"parameter 'tau11': expected a variance >= 0, got {tau11!r}")
        if not isinstance(extra_holdout, bool):
            raise MlsimkitError(f"parameter 'extra_holdout': expected true or false, got {extra_holdout!r}")
        self._tau00, self._tau11, self.extra_holdout = tau00, tau11, extra_holdout
        if int(n_per_school) < 2:
            raise MlsimkitError(f"parameter 'n_per_school': expected an integer >= 2, got {n_per_school!r}")
        if icc is not None:
            _check_prob("icc", icc, 0.0, 1.0)
        if not sigma2 > 0:
            raise MlsimkitError(f"parameter 'sigma2': expected a positive variance, got {sigma2!r}")
        _check_prob("r", abs(r), 0.0, 1.0, closed_hi=True)
        if len(gamma) != 4:
            raise MlsimkitError(f"parameter 'gamma': expected 4 values (g00, g01, g10, g11), got {gamma!r}")
        self.n_per_school = int(n_per_school)
        self.sigma2 = float(sigma2)
        self.icc = float(icc) if icc is not None else self._tau00 / (self._tau00 + self.sigma2)
        self.r = float(r)
        self.gamma = tuple(float(g) for g in gamma)
        self.schema_ = _schema(
            "afshartous-deleeuw", {"W": "school predictor, N(0, 1)"},
            {"X": "student predictor, N(0, 1)", "Y": "outcome"},
            "Afshartous & de Leeuw (2005) two-level random-slope design",
        )

    @property
    def tau00(self) -> float:
        return self._tau00 if self._tau00 is not None else self.icc * self.sigma2 / (1 - self.icc)

    @property
    def tau11(self) -> float:
        return self._tau11 if self._tau11 is not None else self.tau00

    @property
    def tau(self) -> np.ndarray:
        """Covariance matrix of ``(u_0j, u_1j)``: ``tau01 = r sqrt(tau00 tau11)``."""
        t0, t1 = self.tau00, self.tau11
        c = self.r * (t0 if t0 == t1 else np.sqrt(t0 * t1))
        return np.array([[t0, c], [c, t1]])

    def fit(self, data=None) -> "AfshartousDeLeeuw":
        return self

    def sample(self, n_clusters: int, *, seed: Any, return_effects: bool = False):
        """Draw ``n_clusters`` schools; with ``return_effects`` also the true ``u`` (J x 2) and ``e``."""
        J = self._check_n_clusters(n_clusters)
        rng = as_rng(seed)
        n = self.n_per_school + (1 if self.extra_holdout else 0)
        g = np.repeat(np.arange(J), n)
        W = rng.standard_normal(J)
        u = _correlated(rng, J, self.tau)
        X = rng.standard_normal(J * n)
        e = rng.normal(0.0, np.sqrt(self.sigma2), J * n)
        g00, g01, g10, g11 = self.gamma
        b0 = g00 + g01 * W + u[:, 0]
        b1 = g10 + g11 * W + u[:, 1]
        Y = b0[g] + b1[g] * X + e
        data = _tables(self.schema_, {"W": W}, {"X": X, "Y": Y}, g, J)
        return (data, {"u": u, "e": e}) if return_effects else data


class HuangOmittedVariable(Generator):
    """Demonstration 2's traditional design with an omitted school predictor (see the module docstring).

    Parameters
    ----------
    gamma : 4 floats
        ``(g0, gx, g1, g2)``: intercept and coefficients of ``X``, ``W1``, ``W2``; default ``(0, 5, 2, 2)``.
    rho_w : float
        Correlation of ``W1`` and ``W2`` (school level), default 0.4.
    rho_xw : float
        Correlation of ``X`` and ``W2`` (student level), default 0.3.
    tau00, sigma2 : float
        Random-intercept and residual variances, default 1 and 4.
    cluster_size : (int, int)
        Inclusive bounds of the uniform school sizes, default ``(10, 30)``.
    means, sds : 3 floats
        Means and standard deviations of ``X``, ``W1``, ``W2``; default 0 and 1.
    icc_x : float or None
        ICC of ``X`` (at least ``rho_xw^2``); ``None`` means ``rho_xw^2``.
    """

    name = "huang-omitted"

    def __init__(self, gamma=(0.0, 5.0, 2.0, 2.0), rho_w: float = 0.4, rho_xw: float = 0.3, tau00: float = 1.0,
                 sigma2: float = 4.0, cluster_size=(10, 30), means=(0.0, 0.0, 0.0), sds=(1.0, 1.0, 1.0),
                 icc_x: float | None = None, label: str = "huang"):
        if len(gamma) != 4:
            raise MlsimkitError(f"parameter 'gamma': expected 4 values (g0, gx, g1, g2), got {gamma!r}")
        _check_prob("|rho_w|", abs(rho_w))
        _check_prob("|rho_xw|", abs(rho_xw))
        if tau00 < 0 or not sigma2 > 0:
            raise MlsimkitError(f"parameters 'tau00', 'sigma2': expected tau00 >= 0 and sigma2 > 0, got {tau00!r}, {sigma2!r}")
        lo, hi = (int(v) for v in cluster_size)
        if not 1 <= lo <= hi:
            raise MlsimkitError(f"parameter 'cluster_size': expected (min, max) with 1 <= min <= max, got {cluster_size!r}")
        if len(means) != 3 or len(sds) != 3 or min(sds) <= 0:
            raise MlsimkitError("parameters 'means', 'sds': expected 3 values each (X, W1, W2), positive sds")
        icc_min = rho_xw**2
        if icc_x is not None and not icc_min - 1e-12 <= icc_x < 1:
            raise MlsimkitError(f"parameter 'icc_x': expected a value in [rho_xw^2 = {icc_min:.4g}, 1), got {icc_x!r}")
        self.gamma = tuple(float(v) for v in gamma)
        self.rho_w = float(rho_w)
        self.rho_xw = float(rho_xw)
        self.tau00 = float(tau00)
        self.sigma2 = float(sigma2)
        self.cluster_size = (lo, hi)
        self.means = tuple(float(v) for v in means)
        self.sds = tuple(float(v) for v in sds)
        self.icc_x = None if icc_x is None else float(icc_x)
        self.label = label
        self.schema_ = _schema(
            f"huang-omitted-{label}",
            {"W1": "observed school predictor", "W2": "school predictor omitted by the analysis models"},
            {"X": "student predictor correlated with W2", "Y": "outcome"},
            "Huang (2017)-style omitted school variable design",
        )

    @property
    def coefficients(self) -> pd.Series:
        """True coefficients named as the analysis models name them."""
        return pd.Series(self.gamma, index=["Intercept", "X", "W1", "W2"])

    def fit(self, data=None) -> "HuangOmittedVariable":
        return self

    def sample(self, n_clusters: int, *, seed: Any, return_effects: bool = False):
        J = self._check_n_clusters(n_clusters)
        rng = as_rng(seed)
        lo, hi = self.cluster_size
        sizes = rng.integers(lo, hi + 1, size=J)
        g = np.repeat(np.arange(J), sizes)
        N = g.size
        z1 = rng.standard_normal(J)
        z2 = self.rho_w * z1 + np.sqrt(1 - self.rho_w**2) * rng.standard_normal(J)
        mx, m1, m2 = self.means
        sx, s1, s2 = self.sds
        icc_x = self.rho_xw**2 if self.icc_x is None else self.icc_x
        v = rng.standard_normal(J)
        ex = rng.standard_normal(N)
        zx = (self.rho_xw * z2 + np.sqrt(max(icc_x - self.rho_xw**2, 0.0)) * v)[g] + np.sqrt(1 - icc_x) * ex
        X = mx + sx * zx
        W1 = m1 + s1 * z1
        W2 = m2 + s2 * z2
        u = rng.normal(0.0, np.sqrt(self.tau00), J)
        e = rng.normal(0.0, np.sqrt(self.sigma2), N)
        g0, gx, g1, g2 = self.gamma
        Y = g0 + gx * X + (g1 * W1 + g2 * W2 + u)[g] + e
        data = _tables(self.schema_, {"W1": W1, "W2": W2}, {"X": X, "Y": Y}, g, J)
        return (data, {"u": u, "e": e}) if return_effects else data

    @classmethod
    def from_real(cls, real: MultilevelData, coefficients: Mapping[str, float], tau00: float, sigma2: float, *,
                  outcome: str, student: str, observed: str, omitted: str,
                  cluster_size=(10, 30)) -> "HuangOmittedVariable":
        """The adjusted design of Suk et al. appendix S5.2: every value taken from the real data.

        ``coefficients`` holds the true-model coefficients of ``student``, ``observed`` and ``omitted``
        (e.g. :attr:`TrueModel.coefficients <mlsimkit.demonstrations.TrueModel>`); ``tau00`` and
        ``sigma2`` its variance components. Means, standard deviations, ``rho_w`` (school-level correlation
        of ``observed`` and ``omitted``), ``rho_xw`` (student-level correlation of ``student`` with
        ``omitted``) and ``icc_x`` (ANOVA ICC of ``student``) come from ``real``. The intercept makes the
        outcome's mean equal the real mean. Cluster sizes stay those of the traditional design.
        """
        from .icc import anova_components

        for v, tab in ((student, real.child), (observed, real.parent), (omitted, real.parent), (outcome, real.child)):
            if v not in tab.columns or not pd.api.types.is_numeric_dtype(tab[v].dtype):
                raise MlsimkitError(f"adjusted design: numerical column {v!r} not found in the real data")
        for v in (student, observed, omitted):
            if v not in coefficients:
                raise MlsimkitError(f"adjusted design: no true coefficient for {v!r} (have {list(coefficients)})")
        joined = real.join_as_one()
        x = joined[student].to_numpy(float)
        w1 = real.parent[observed].to_numpy(float)
        w2 = real.parent[omitted].to_numpy(float)
        rho_w = float(np.corrcoef(w1, w2)[0, 1])
        rho_xw = float(np.corrcoef(x, joined[omitted].to_numpy(float))[0, 1])
        icc = anova_components(x, joined[real.cluster_key])["icc"]
        icc_x = float(max(icc, rho_xw**2))
        gx, g1, g2 = (float(coefficients[v]) for v in (student, observed, omitted))
        means = (x.mean(), w1.mean(), w2.mean())
        g0 = float(joined[outcome].mean()) - gx * means[0] - g1 * joined[observed].mean() - g2 * joined[omitted].mean()
        return cls(gamma=(g0, gx, g1, g2), rho_w=rho_w, rho_xw=rho_xw, tau00=float(tau00), sigma2=float(sigma2),
                   cluster_size=cluster_size, means=means, sds=(x.std(ddof=1), w1.std(ddof=1), w2.std(ddof=1)),
                   icc_x=icc_x, label="adjusted")
