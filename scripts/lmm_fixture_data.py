"""Write the small data sets behind the lme4 fixtures of the mixed-model engine.

    .venv/bin/python scripts/lmm_fixture_data.py      # -> tests/fixtures/lmm/data/*.csv

Then ``Rscript scripts/lme4_fixtures.R`` fits every case with lme4/lmerTest and writes
``tests/fixtures/lmm/<case>.json``.  The HSB cases read the shipped CSVs directly.
Simulated sets use fixed seeds; for the "singular" and "near-zero ICC" sets the seed is the
first one (from 0) whose REML fit by this package is on the boundary / in the interior, so the
fixtures cover both situations (the choice is deterministic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import mlsimkit.datasets as ds
from mlsimkit.lmm import lmm

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lmm" / "data"


def _gid(k, m):
    w = len(str(m))
    return [f"g{i:0{w}d}" for i in k]


def hsb10():
    df = ds.load("hsb").join_as_one()
    schools = sorted(df["School"].unique())
    rng = np.random.default_rng(20240510)
    pick = sorted(rng.choice(schools, size=10, replace=False))
    sub = df[df["School"].isin(pick)]
    return sub[["School", "MathAch", "SES", "MEANSES", "Sector"]].reset_index(drop=True)


def sim_ri(seed, m, nper, icc, beta=(1.0, 0.5, 0.3)):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), nper)
    x = rng.normal(size=g.size)
    w = np.repeat(rng.normal(size=m), nper)  # level-2 predictor
    tau = np.sqrt(icc / (1 - icc)) if icc > 0 else 0.0
    y = beta[0] + beta[1] * x + beta[2] * w + tau * rng.normal(size=m)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"g": _gid(g, m), "y": y, "x": x, "w": w})


def first_seed(make, formula, want_singular):
    for seed in range(200):
        d = make(seed)
        if lmm(formula, d).singular == want_singular:
            return seed, d
    raise RuntimeError("no seed found")


def unbalanced(seed=7):
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.round(np.geomspace(1, 300, 25)).astype(int))
    sizes = np.concatenate([sizes, [1, 2, 2, 3]])
    m = sizes.size
    g = np.repeat(np.arange(m), sizes)
    x = rng.normal(size=g.size) + 0.5 * rng.normal(size=m)[g]
    z = rng.binomial(1, 0.4, size=m)[g].astype(float)
    b0 = rng.normal(scale=1.0, size=m)
    b1 = 0.5 * b0 + rng.normal(scale=0.4, size=m)
    y = 2 + 0.8 * x - 0.5 * z + b0[g] + b1[g] * x + rng.normal(scale=1.5, size=g.size)
    return pd.DataFrame({"g": _gid(g, m), "y": y, "x": x, "z": z})


def q3(seed=11, m=40, nper=15):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), nper)
    x1, x2 = rng.normal(size=(2, g.size))
    C = np.array([[1.0, 0.3, -0.2], [0.3, 0.5, 0.1], [-0.2, 0.1, 0.3]])
    b = rng.multivariate_normal(np.zeros(3), C, size=m)
    y = 1 + 0.5 * x1 - 0.3 * x2 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2 + rng.normal(size=g.size)
    return pd.DataFrame({"g": _gid(g, m), "y": y, "x1": x1, "x2": x2})


def slope_singular(seed):
    rng = np.random.default_rng(seed)
    m, nper = 12, 8
    g = np.repeat(np.arange(m), nper)
    x = rng.normal(size=g.size)
    y = 1 + 0.5 * x + 0.8 * rng.normal(size=m)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"g": _gid(g, m), "y": y, "x": x})


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    hsb10().to_csv(OUT / "hsb10.csv", index=False)
    s, d = first_seed(lambda k: sim_ri(k, 30, 10, 0.02), "y ~ x + w + (1 | g)", want_singular=False)
    d.to_csv(OUT / "lowicc.csv", index=False)
    print("lowicc seed", s)
    s, d = first_seed(lambda k: sim_ri(1000 + k, 20, 5, 0.0), "y ~ x + (1 | g)", want_singular=True)
    d.to_csv(OUT / "singular_ri.csv", index=False)
    print("singular_ri seed", 1000 + s)
    s, d = first_seed(lambda k: slope_singular(2000 + k), "y ~ x + (1 + x | g)", want_singular=True)
    d.to_csv(OUT / "singular_rs.csv", index=False)
    print("singular_rs seed", 2000 + s)
    unbalanced().to_csv(OUT / "unbalanced.csv", index=False)
    q3().to_csv(OUT / "q3.csv", index=False)


if __name__ == "__main__":
    main()
