"""Speed of one causal replication: every estimator, both versions, cross-fitted, on one core.

Issue 13 asks for <= 2 s per replication at 160 schools. Two data sets of that size are timed:

- ``hybrid-hsb``: a hybrid draw (mlsimkit.causal.hybrid) of 160 schools from the real HSB data (school
  bootstrap covariates, linear multilevel outcome model, overlap 0.5), about 45 students per school;
- ``known-dgp``: mlsimkit.causal.examples with 160 schools of 23-67 students (mean 45).

Run: ``PYTHONPATH=$PWD python benchmarks/bench_causal.py [reps]``. BLAS is limited to one thread.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlsimkit import datasets
from mlsimkit.causal import CausalSpec, estimate_ate
from mlsimkit.causal.examples import COLUMNS, simulate
from mlsimkit.causal.hybrid import HybridGenerator
from mlsimkit.generators import SchoolBootstrap


def timed(make, spec, reps):
    times, rows = [], None
    for r in range(reps):
        frame = make(r)
        t0 = time.perf_counter()
        rows = estimate_ate(frame, spec, seed=r)
        times.append(time.perf_counter() - t0)
    return np.array(times), rows, len(frame)


def main(reps: int = 10) -> None:
    hsb = datasets.load("hsb")
    treatment, outcome = "Sector", "MathAch"          # the study's roles (params/hsb-* name them too)
    student, school = ["SES", "Minority", "Sex"], ["Size", "PRACAD", "DISCLIM", "HIMINTY"]
    with threadpool_limits(1):
        t0 = time.perf_counter()
        hyb = HybridGenerator(treatment, outcome, student=student, school=school, overlap=0.5,
                              covariates=SchoolBootstrap().fit(hsb)).fit(hsb)
        t_fit = time.perf_counter() - t0
        spec_h = CausalSpec(treatment, outcome, hsb.cluster_key, student=tuple(student), school=tuple(school))
        t0 = time.perf_counter()
        draws = [hyb.sample_with_truth(160, seed=r) for r in range(reps)]
        t_draw = (time.perf_counter() - t0) / reps
        cases = {
            "hybrid-hsb": (lambda r: draws[r][0].join_as_one(), spec_h),
            "known-dgp": (lambda r: simulate(160, 45, r), CausalSpec(**COLUMNS)),
        }
        print(f"hybrid fit on HSB: {t_fit:.3f} s; one hybrid draw of 160 schools: {t_draw:.3f} s")
        for name, (make, spec) in cases.items():
            times, rows, n = timed(make, spec, reps)
            print(f"{name}: 160 schools, {n} students, {len(rows)} estimates per replication: "
                  f"median {np.median(times):.3f} s, max {times.max():.3f} s over {reps} replications "
                  f"({'within' if np.median(times) <= 2 else 'OVER'} the 2 s budget)")
            per = rows.groupby("version")["fit_time"].max()
            print("  time by version (s, last replication): " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
