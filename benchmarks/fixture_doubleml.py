"""Write ``tests/fixtures/doubleml_aipw.json``: DoubleML's AIPW (``DoubleMLIRM``, score ``ATE``) on a small
clustered data set of :mod:`mlsimkit.causal.examples`, with our school-grouped folds, for
``tests/test_causal.py::test_aipw_matches_doubleml_fixture``.

DoubleML (Bach, Chernozhukov, Kurz & Spindler 2022, JMLR 23(53); BSD-3-Clause) is an optional dependency, not
needed by the tests. Run once, e.g. with DoubleML installed to a throw-away folder::

    python -m pip install --target /tmp/dmlpkgs doubleml        # (--no-deps plus what is missing)
    PYTHONPATH=/tmp/dmlpkgs:$PWD python benchmarks/fixture_doubleml.py

Three DoubleML fits on the same data and the same folds (``set_sample_splitting``: the rows of each of our
school folds, :func:`mlsimkit.causal.school_folds`, as DoubleML's test sets; one repetition):

``own``
    DoubleML's own nuisance fits: ``ml_m`` an unpenalised scikit-learn ``LogisticRegression`` on the student
    rows (our single-level propensity with ``ridge=0``), ``ml_g`` a ``LinearRegression`` fitted **per arm**
    (DoubleML's IRM fits g0 on the controls and g1 on the treated; our outcome model is one pooled linear
    regression with the treatment as a column, so this run checks folds, propensity, truncation and score
    with DoubleML's outcome learner, which the test reproduces by per-arm least squares on our folds).
``external``
    ``ml_m`` fitted by DoubleML as above, ``ml_g0`` / ``ml_g1`` our pooled cross-fitted outcome predictions
    (``external_predictions``): DoubleML's score, truncation and SE on our outcome model, to compare with
    :func:`mlsimkit.causal.estimate_ate` (AIPW, single, ``crossfit="all"``, ``ridge=0``) as it is.
``cluster``
    as ``external`` on ``DoubleMLData`` with ``cluster_cols`` = the school, when this DoubleML version
    accepts our folds for clustered data: its cluster-robust SE (``sum_j S_j^2 / n^2`` when every fold holds
    the same number of schools, without our J/(J-1) factor).

Propensity truncation: DoubleML's default ``clipping_threshold`` 0.01 = our ``bounds=(0.01, 0.99)``; no IPW
normalisation (``normalize_ipw=False``) = our AIPW score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mlsimkit.causal import CausalSpec, prepare, school_folds
from mlsimkit.causal.estimators import _crossfit
from mlsimkit.causal.examples import COLUMNS, simulate

SEED, N_SCHOOLS, STUDENTS, FOLDS, FOLD_SEED = 2026, 40, 8, 5, 7
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "doubleml_aipw.json"


def main() -> None:
    import doubleml as dml
    import sklearn
    from sklearn.linear_model import LinearRegression, LogisticRegression

    df = simulate(N_SCHOOLS, STUDENTS, SEED)
    spec = CausalSpec(**COLUMNS)
    prep = prepare(df, spec)
    folds = school_folds(prep.a_school, FOLDS, np.random.default_rng(FOLD_SEED))
    row_fold = folds[prep.codes]
    n = len(df)
    smpls = [[(np.flatnonzero(row_fold != k), np.flatnonzero(row_fold == k)) for k in range(FOLDS)]]
    x_cols = list(COLUMNS["student"]) + list(COLUMNS["school"])
    ours = _crossfit(prep, "single", folds, propensity=True, ridge=0.0)
    ext = {"A": {"ml_g0": ours["Q0"].reshape(n, 1), "ml_g1": ours["Q1"].reshape(n, 1)}}

    def learner_m():
        return LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=10_000)

    def irm(cluster: bool):
        data = df.assign(A=df["A"].astype(int), school_id=prep.codes)
        kw = {"cluster_cols": "school_id"} if cluster else {}
        d = dml.DoubleMLData(data, y_col="Y", d_cols="A", x_cols=x_cols, **kw)
        m = dml.DoubleMLIRM(d, LinearRegression(), learner_m(), n_folds=FOLDS, score="ATE",
                            draw_sample_splitting=False)
        if cluster:   # the same folds, as partitions of the schools (DoubleML's cluster sample splitting)
            m.set_sample_splitting(smpls, [[([np.flatnonzero(folds != k)], [np.flatnonzero(folds == k)])
                                            for k in range(FOLDS)]])
        else:
            m.set_sample_splitting(smpls)
        return m

    out = {"doubleml_version": dml.__version__, "sklearn_version": sklearn.__version__,
           "data": {"generator": "mlsimkit.causal.examples.simulate", "n_schools": N_SCHOOLS,
                    "students": STUDENTS, "seed": SEED, "n": n},
           "folds": {"k": FOLDS, "seed": FOLD_SEED, "school_fold": folds.tolist()},
           "learners": {"ml_g": "LinearRegression() per arm (own) / our pooled OLS predictions (external)",
                        "ml_m": "LogisticRegression(C=inf, solver='newton-cg', tol=1e-12)"},
           "clipping_threshold": 0.01, "normalize_ipw": False}
    own = irm(False)
    own.fit()
    out["own"] = {"ate": float(own.coef[0]), "se": float(own.se[0]),
                  "m_hat": own.predictions["ml_m"][:, 0, 0].tolist()}
    ex = irm(False)
    ex.fit(external_predictions=ext)
    out["external"] = {"ate": float(ex.coef[0]), "se": float(ex.se[0])}
    try:
        cl = irm(True)
        cl.fit(external_predictions=ext)
        out["cluster"] = {"ate": float(cl.coef[0]), "se": float(cl.se[0])}
    except Exception as e:  # recorded, not hidden: the test then skips the cluster comparison
        out["cluster"] = {"error": f"{type(e).__name__}: {e}"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"DoubleML {out['doubleml_version']}: own ATE {out['own']['ate']:.6f} (SE {out['own']['se']:.6f}); "
          f"external {out['external']}; cluster {out['cluster']} -> {OUT}", file=sys.stdout)


if __name__ == "__main__":
    main()
