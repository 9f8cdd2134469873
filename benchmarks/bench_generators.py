"""Generators on HSB: training time, students sampled per second (fresh vs pooled), and CTGAN's
school-level fidelity under CLCA, the naive alignment and none.

    python benchmarks/bench_generators.py [--generators ctgan parametric bootstrap clavaddpm]
                                          [--epochs 30] [--reps 5] [--pool-size 5000] [--seeds 5]

Figures printed (medians over ``--reps`` timed calls; the machine is shared, so expect noise):

* ``fit_s``: training time on HSB (160 schools, 7,185 students);
* ``fresh students/s``: ``generator.sample(160, seed=s)`` per replication;
* ``pool build_s`` and ``pooled students/s``: ``SchoolPool(generator, pool_size).build()`` once, then
  ``pool.sample(160, seed=s)`` per replication;
* for CTGAN: per school-level variable, the KS complement (numerical) or TV complement (categorical)
  of the synthetic school table against the real one, under each alignment applied to the same raw
  CTGAN rows (``--seeds`` samples of 160 schools), plus CP-SAT status and solve time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlsimkit.datasets as ds  # noqa: E402
from mlsimkit.generators import SchoolPool, make  # noqa: E402


def ks_complement(real: np.ndarray, syn: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    return 1.0 - float(ks_2samp(real, syn).statistic)


def tv_complement(real: pd.Series, syn: pd.Series) -> float:
    p = real.value_counts(normalize=True)
    q = syn.value_counts(normalize=True).reindex(p.index, fill_value=0.0)
    return 1.0 - 0.5 * float(np.abs(p - q).sum())


def school_fidelity(real, syn) -> dict:
    out = {}
    for c in real.schema.tables[real.levels[0]].data_columns:
        col = real.schema.column(c)
        if col.kind == "numerical":
            out[c] = ks_complement(real.parent[c].to_numpy(float), syn.parent[c].to_numpy(float))
        else:
            out[c] = tv_complement(real.parent[c], syn.parent[c])
    return out


def timed(fn, reps):
    times, out = [], None
    for r in range(reps):
        t0 = time.perf_counter()
        out = fn(r)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generators", nargs="+", default=["bootstrap", "parametric", "ctgan", "clavaddpm"])
    ap.add_argument("--epochs", type=int, default=30, help="CTGAN epochs")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pool-size", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=5, help="CTGAN samples for the alignment comparison")
    ap.add_argument("--n-clusters", type=int, default=160)
    args = ap.parse_args(argv)

    hsb = ds.load("hsb")
    n = args.n_clusters
    rows = []
    fitted = {}
    for name in args.generators:
        settings = {"epochs": args.epochs} if name == "ctgan" else {}
        try:
            gen = make(name, **settings)
        except Exception as exc:  # noqa: BLE001 - e.g. clavaddpm not installed
            print(f"{name}: skipped ({exc})")
            continue
        t0 = time.perf_counter()
        gen.fit(hsb)
        fit_s = time.perf_counter() - t0
        fitted[name] = gen
        fresh_s, d = timed(lambda r: gen.sample(n, seed=1000 + r), args.reps)
        n_students = len(d.child)
        pool = SchoolPool(gen, args.pool_size, seed=7)
        t0 = time.perf_counter()
        pool.build()
        build_s = time.perf_counter() - t0
        pooled_s, dp = timed(lambda r: pool.sample(n, seed=2000 + r), max(args.reps, 20))
        rows.append({
            "generator": name, "fit_s": fit_s, "fresh_s_per_dataset": fresh_s,
            "fresh_students_per_s": n_students / fresh_s, "pool_size": args.pool_size,
            "pool_build_s": build_s, "pooled_s_per_dataset": pooled_s,
            "pooled_students_per_s": len(dp.child) / pooled_s,
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    print("\n== training and sampling on HSB (n_clusters = %d) ==" % n)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    if "ctgan" in fitted:
        gen = fitted["ctgan"]
        hist = gen.history_
        print(f"\nCTGAN loss history (last 3 of {len(hist)} epochs):\n{hist.tail(3).to_string(index=False)}")
        fid, reports = [], []
        for s in range(args.seeds):
            raw = gen.sample_raw(n, seed=s)
            for alignment in ("clca", "naive", "none"):
                syn, rep = gen.align(raw, alignment)
                for var, v in school_fidelity(hsb, syn).items():
                    fid.append({"seed": s, "alignment": alignment, "variable": var, "complement": v})
                if alignment == "clca":
                    reports.append(rep.assign(seed=s))
        fid = pd.DataFrame(fid)
        table = fid.pivot_table(index="variable", columns="alignment", values="complement", aggfunc="mean")
        table.loc["mean"] = table.mean()
        print(f"\n== CTGAN school-level marginals: KS complement (numerical) / TV complement (categorical), "
              f"mean over {args.seeds} samples of {n} schools ==")
        print(table[["clca", "naive", "none"]].to_string(float_format=lambda v: f"{v:.3f}"))
        rep = pd.concat(reports)
        cat = rep[rep["kind"] != "numerical"]
        print("\n== CLCA CP-SAT (categorical school variables) ==")
        print(cat.groupby("variable").agg(status=("status", lambda s: ",".join(sorted(set(s)))),
                                          fallback=("fallback", "sum"), median_s=("seconds", "median"),
                                          inconsistent_share=("inconsistent_share", "mean")).to_string())
        t0 = time.perf_counter()
        _, rep = gen.sample_with_report(args.pool_size, seed=12)
        print(f"\n== CLCA on a pool-sized sample of {args.pool_size} schools ({time.perf_counter() - t0:.1f} s) ==")
        print(rep[["variable", "status", "fallback", "objective", "seconds"]].to_string(index=False))


if __name__ == "__main__":
    main()
