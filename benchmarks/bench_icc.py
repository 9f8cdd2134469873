"""Latent-scale ICC of a binary variable: the random-intercept logistic fit with the analytic gradient
(what :func:`mlsimkit.icc.logistic_random_intercept` does) against the same fit with L-BFGS-B's
finite-difference gradient (what it did before issue 15), measured in the same run, calls alternated.

    python benchmarks/bench_icc.py [--reps 7] [--js 10 50 160 300]

Per number of clusters J (cluster sizes 5-60, true tau2 from 0 to 2, 10 data sets per J): median
milliseconds per fit of each, their ratio, the largest |ICC difference| and the smallest log-likelihood
gain of the analytic fit (negative: the finite-difference fit found a higher likelihood).

Both run with one BLAS/OpenMP thread, as Stage 3's quality evaluation runs them. Measured 2026-12-04 on the
2-core machine while a book build ran beside it (medians of 7, 10 data sets per J):

=====  ===========  ==============  =====  ==========  ===========
J      analytic ms  differences ms  ratio  max |dICC|  min dloglik
=====  ===========  ==============  =====  ==========  ===========
10     3.15         7.38            2.34   4.5e-08     -1.7e-12
50     3.71         8.54            2.30   3.1e-07     5.7e-14
160    5.15         11.48           2.23   4.4e-08     -1.3e-11
300    7.84         16.74           2.13   1.3e-07     -7.7e-12
=====  ===========  ==============  =====  ==========  ===========

L-BFGS-B needs a third of the criterion evaluations (it no longer differences each coordinate); the fits
agree to the optimiser's tolerance. In the default book (five studies) the ICC tables moved by at most 2e-4
(quality table statistics) and 3e-7 (ICCs); every simulation result was identical.
"""
from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

from mlsimkit import icc as I


def _data(J: int, rng: np.random.Generator):
    g = np.repeat(np.arange(J), rng.integers(5, 60, J))
    u = rng.normal(0, np.sqrt(rng.uniform(0, 2)), J)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1.2) + u[g])))
    return (rng.random(g.size) < p).astype(float), g


def _finite_differences(fun, x0, args=(), jac=None, **kw):
    """``optimize.minimize`` as the fit called it before: the criterion alone, gradients by differences."""
    return _minimize(lambda th: fun(th, False), x0, **kw)


_minimize = optimize.minimize


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--js", type=int, nargs="+", default=[10, 50, 160, 300])
    args = ap.parse_args(argv)
    with threadpool_limits(1):  # as Stage 3's quality evaluation runs it (quality.report)
        _run(args)


def _run(args) -> None:
    rng = np.random.default_rng(2026)
    print(f"{'J':>5} {'analytic ms':>12} {'differences ms':>15} {'ratio':>6} {'max |dICC|':>11} {'min dloglik':>12}")
    for J in args.js:
        sets = [_data(J, rng) for _ in range(10)]
        t_a, t_f = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            fa = [I.logistic_random_intercept(y, g) for y, g in sets]
            t_a.append((time.perf_counter() - t) / len(sets))
            t = time.perf_counter()
            with mock.patch.object(I.optimize, "minimize", _finite_differences):
                ff = [I.logistic_random_intercept(y, g) for y, g in sets]
            t_f.append((time.perf_counter() - t) / len(sets))
        icc = lambda f: f["tau2"] / (f["tau2"] + I.LOGISTIC_VARIANCE)  # noqa: E731
        d_icc = max(abs(icc(a) - icc(f)) for a, f in zip(fa, ff))
        d_ll = min(a["loglik"] - f["loglik"] for a, f in zip(fa, ff))
        ma, mf = statistics.median(t_a) * 1e3, statistics.median(t_f) * 1e3
        print(f"{J:>5} {ma:>12.2f} {mf:>15.2f} {mf / ma:>6.2f} {d_icc:>11.1e} {d_ll:>12.1e}")


if __name__ == "__main__":
    main()
