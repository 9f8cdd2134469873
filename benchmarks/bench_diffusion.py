"""Benchmark of the ClavaDDPM-style diffusion generator on HSB (not a test; prints figures).

Measures, with default settings and ``torch.set_num_threads(--threads)``:

* training time on HSB (``--threads`` is passed as the generator's ``n_threads``) (school model, student model, classifier), with and without decomposition;
* sampling rate (students per second) for 160 and 1,000 schools, median of ``--reps`` runs;
* the real between-group share of MathAch and SES (variance of the latent groups' means over the total):
  the ICC a faithful sampler of ``p(student | group)`` gives without decomposition;
* ICC(1) of MathAch and SES, real vs synthetic (median over ``--samples`` synthetic data sets), the ICC
  similarity ``1 - |cbrt(icc_syn) - cbrt(icc_real)|`` and the real-vs-real reference band: the 160 real
  schools split at random into two halves (``--splits`` times), ICC similarity of one half against the
  other, 2.5% and 97.5% percentiles.

Usage::

    python benchmarks/bench_diffusion.py                # defaults, 2 threads
    python benchmarks/bench_diffusion.py --device cuda  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

import mlsimkit.datasets as ds
from mlsimkit.generators.diffusion import ClavaDDPMGenerator
from mlsimkit.icc import anova_components

VARS = ("MathAch", "SES")


def icc(df: pd.DataFrame, col: str, key: str = "School") -> float:
    return anova_components(df[col].to_numpy(float), df[key].to_numpy())["icc"]


def similarity(a: float, b: float) -> float:
    return 1.0 - abs(np.cbrt(max(a, 0.0)) - np.cbrt(max(b, 0.0)))


def reference_band(data, splits: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    schools = data.parent.School.to_numpy()
    out = {v: [] for v in VARS}
    for _ in range(splits):
        perm = rng.permutation(schools)
        a = data.child[data.child.School.isin(perm[: len(perm) // 2])]
        b = data.child[data.child.School.isin(perm[len(perm) // 2:])]
        for v in VARS:
            out[v].append(similarity(icc(b, v), icc(a, v)))
    return {v: (float(np.quantile(s, 0.025)), float(np.median(s)), float(np.quantile(s, 0.975))) for v, s in out.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params", default="{}", help="JSON of extra ClavaDDPMGenerator settings")
    ap.add_argument("--guidance", default="0,1,2,3",
                    help="comma-separated guidance scales at which the ICC is also reported ('' to skip)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    extra = json.loads(args.params)
    hsb = ds.load("hsb")
    real = {v: icc(hsb.child, v) for v in VARS}
    band = reference_band(hsb, args.splits)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, settings {extra or 'defaults'}")
    results = {"real_icc": real, "band": band, "runs": {}}
    rows = []
    for dec in (True, False):
        gen = ClavaDDPMGenerator(decompose=dec, device=args.device, **{"n_threads": args.threads, **extra})
        t0 = time.perf_counter()
        gen.fit(hsb)
        fit_s = time.perf_counter() - t0
        rates = {}
        for n in (160, 1000):
            r = []
            for rep in range(args.reps):
                t = time.perf_counter()
                syn = gen.sample(n, seed=1000 + rep)
                r.append(len(syn.child) / (time.perf_counter() - t))
            rates[n] = float(np.median(r))
        syn_icc = {v: [] for v in VARS}
        for s in range(args.samples):
            syn = gen.sample(160, seed=s)
            for v in VARS:
                syn_icc[v].append(icc(syn.child, v))
        # what a sampler of p(student | group) can reach without decomposition: the real between-group share
        grp = hsb.child.School.map(gen.school_groups_)
        share = {v: float(((hsb.child[v].groupby(grp).transform("mean") - hsb.child[v].mean()) ** 2).sum()
                          / ((hsb.child[v] - hsb.child[v].mean()) ** 2).sum()) for v in VARS}
        run = {"between_group_share": share, "fit_seconds": fit_s, "fit_seconds_by_model": gen.fit_seconds_by_model_, "n_groups": gen.n_groups_,
               "students_per_second": rates, "icc": {v: float(np.median(x)) for v, x in syn_icc.items()},
               "icc_all": syn_icc}
        sweep = {}
        default_scale = gen.guidance_scale
        for gs in [float(x) for x in args.guidance.split(",") if x.strip()]:
            gen.guidance_scale = gs
            vals = {v: [] for v in VARS}
            for s in range(args.samples):
                syn = gen.sample(160, seed=s)
                for v in VARS:
                    vals[v].append(icc(syn.child, v))
            sweep[gs] = {v: float(np.median(x)) for v, x in vals.items()}
        gen.guidance_scale = default_scale
        run["icc_by_guidance"] = sweep
        results["runs"]["decompose" if dec else "no-decompose"] = run
        print(f"\n== decompose={dec}: fit {fit_s:.1f} s "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in gen.fit_seconds_by_model_.items())}); "
              f"{gen.n_groups_} groups; sampling {rates[160]:,.0f} students/s (160 schools), "
              f"{rates[1000]:,.0f} students/s (1,000 schools)")
        for v in VARS:
            sims = [similarity(x, real[v]) for x in syn_icc[v]]
            lo, mid, hi = band[v]
            rows.append(dict(decompose=dec, variable=v, icc_real=real[v], group_share=share[v],
                             icc_syn_median=np.median(syn_icc[v]),
                             similarity_median=np.median(sims), similarity_min=np.min(sims),
                             band_lo=lo, band_median=mid, inside_band=np.median(sims) >= lo))
    table = pd.DataFrame(rows)
    results["table"] = table.to_dict(orient="records")
    print("\nICC(1) real vs synthetic; ICC similarity and real-vs-real band (2.5% quantile, median)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    sweep = pd.DataFrame([dict(decompose=k, guidance_scale=gs, **vals) for k, r in results["runs"].items()
                          for gs, vals in r["icc_by_guidance"].items()])
    if len(sweep):
        print("\nmedian synthetic ICC(1) by classifier-guidance scale (real: "
              + ", ".join(f"{v} {real[v]:.3f}" for v in VARS) + ")")
        print(sweep.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
    return results


if __name__ == "__main__":
    main()
