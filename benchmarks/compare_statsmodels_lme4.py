"""Where statsmodels MixedLM (and this engine) disagree with lme4 on the committed fixtures.

    .venv/bin/python benchmarks/compare_statsmodels_lme4.py [--markdown out.md]

For each fixture in tests/fixtures/lmm (written by scripts/lme4_fixtures.R) both engines fit the
same formula and data; the table gives the criterion gap to lme4 (REML criterion / ML deviance;
for statsmodels, this package's profiled criterion evaluated at statsmodels' theta, so the gap
is what statsmodels' optimiser left on the table) and the largest relative differences of the
parameters, with the floors of tests/test_lmm.py (SE for beta, sqrt(G_aa G_bb) for covariances,
the column's max |BLUP| for BLUPs).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mlsimkit.datasets as ds
from mlsimkit.lmm import lmm

FIX = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lmm"


def load(name, hsb):
    if name == "hsb":
        return hsb
    d = pd.read_csv(FIX / "data" / f"{name}.csv", dtype={"School": str})
    if "Sector" in d:
        d["Sector"] = pd.Categorical(d["Sector"], categories=["Public", "Catholic"])
    return d


def rel(a, b, floor=0.0):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.maximum(floor, 1e-300))))


def compare(r, fx):
    G = np.asarray(fx["cov_re"])
    d = np.sqrt(np.outer(np.diag(G), np.diag(G)))
    re_ref = np.asarray(fx["ranef"])
    ours = r.ranef.loc[[str(g) for g in fx["ranef_groups"]]].to_numpy()
    crit = getattr(r, "criterion_profiled", r.criterion)
    return {
        "d_crit": crit - fx["criterion"][0],
        "beta": rel(r.fe_params, fx["beta"], np.asarray(fx["se"])),
        "se": rel(r.bse, fx["se"]),
        "sigma2": rel(r.sigma2, fx["sigma2"][0]),
        "G": float(np.max(np.abs(r.cov_re.to_numpy() - G) / np.maximum(np.abs(G), np.maximum(d, 1e-12)))),
        "blup": float(np.max(np.abs(ours - re_ref) / np.maximum(np.maximum(np.abs(re_ref), np.abs(re_ref).max(axis=0)), 1e-8))),
        "conv": r.converged,
        "sing": r.singular,
        "time_s": r.fit_time,
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args(argv)
    hsb = ds.load("hsb").join_as_one()
    rows = []
    for p in sorted(FIX.glob("*.json")):
        fx = json.loads(p.read_text())
        d = load(fx["data"], hsb)
        for backend in ("mlsimkit", "statsmodels"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = lmm(fx["formula"], d, reml=fx["reml"], backend=backend)
            row = {"case": fx["name"], "engine": backend, "lme4_singular": fx["singular"], **compare(r, fx)}
            if backend == "statsmodels":
                row["message"] = r.message[:80]
            rows.append(row)
            print(row, file=sys.stderr)
    tab = pd.DataFrame(rows)
    fmt = tab.copy()
    for c in ("d_crit", "beta", "se", "sigma2", "G", "blup"):
        fmt[c] = fmt[c].map(lambda v: f"{v:.1e}")
    fmt["time_s"] = fmt["time_s"].map(lambda v: f"{v:.3f}")
    print(fmt.drop(columns=["message"], errors="ignore").to_string(index=False))
    if a.markdown:
        Path(a.markdown).write_text(fmt.fillna("").to_markdown(index=False) if hasattr(fmt, "to_markdown") else fmt.to_string())
    return tab


if __name__ == "__main__":
    main()
