"""Benchmark of the LLM-style generator (tabular-transformer) on HSB (not a test; prints figures).

Measures, with ``torch.set_num_threads(--threads)`` (also passed as the generator's ``n_threads``):

* training time on HSB (school model, student model) at the default settings (or ``--epochs``);
* sampling time for 160 schools (median of ``--reps`` runs);
* ICC(1) of MathAch and SES, real vs synthetic (median over ``--samples`` synthetic data sets), the ICC
  similarity ``1 - |cbrt(icc_syn) - cbrt(icc_real)|`` and the real-vs-real band (the real schools split
  at random into halves ``--splits`` times: 2.5%, 50%, 97.5% of the similarity of one half to the other);
* means and SDs of the student variables, mean school size, and decode failures;
* the share of synthetic schools whose whole token sequence (every school variable's bin or category, and
  the size's bin) equals a real school's: a direct measure of how much the school model memorises;
* the negative control ``--control``: the same model without schoolmates in the context and without the
  school prefix (its ICC should be about 0).

Usage::

    python benchmarks/bench_transformer.py                 # defaults, 2 threads
    python benchmarks/bench_transformer.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

import mlsimkit.datasets as ds
from mlsimkit.generators.transformer import SIZE_COLUMN, TabularTransformerGenerator, _encode

from bench_diffusion import VARS, icc, reference_band, similarity  # the same ICC band as the diffusion benchmark


def school_tokens(gen, data) -> set:
    sizes = data.cluster_sizes().reindex(data.parent.School).to_numpy()
    cols = [_encode(c, sizes if c["name"] == SIZE_COLUMN else data.parent[c["name"]]) for c in gen.school_cols_]
    return list(zip(*cols))


def run(hsb, settings: dict, args) -> dict:
    gen = TabularTransformerGenerator(**settings)
    gen.fit(hsb)
    times = []
    samples = []
    for r in range(max(args.reps, args.samples)):
        t = time.perf_counter()
        syn = gen.sample(160, seed=r)
        times.append(time.perf_counter() - t)
        samples.append(syn)
    out = {
        "settings": settings,
        "fit_seconds": round(gen.fit_seconds_, 1),
        "fit_seconds_by_model": {k: round(v, 1) for k, v in gen.fit_seconds_by_model_.items()},
        "final_loss": gen.history_.groupby("model", sort=False).loss.last().round(4).to_dict(),
        "sample_160_seconds_median": round(float(np.median(times[: args.reps])), 2),
        "decode_failures_total": gen.decode_failures_total_,
        "mean_school_size": round(float(np.mean([s.cluster_sizes().mean() for s in samples])), 1),
    }
    real = set(school_tokens(gen, hsb))
    out["school_token_copy_share"] = round(float(np.mean([np.mean([t in real for t in school_tokens(gen, s)])
                                                          for s in samples])), 3)
    for v in VARS:
        iccs = [icc(s.child, v) for s in samples[: args.samples]]
        out[f"icc_{v}"] = round(float(np.median(iccs)), 3)
        out[f"icc_similarity_{v}"] = round(similarity(float(np.median(iccs)), icc(hsb.child, v)), 3)
        out[f"mean_sd_{v}"] = [round(float(np.mean([s.child[v].mean() for s in samples])), 3),
                               round(float(np.mean([s.child[v].std() for s in samples])), 3)]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="student-model epochs (default: the generator's)")
    ap.add_argument("--reps", type=int, default=3, help="timed sampling runs of 160 schools")
    ap.add_argument("--samples", type=int, default=3, help="synthetic data sets for the ICC")
    ap.add_argument("--splits", type=int, default=200, help="real-vs-real splits for the band")
    ap.add_argument("--school-epochs", type=int, default=None, help="school-model epochs (default: the generator's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--control", action="store_true", help="also run the negative control")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hsb = ds.load("hsb")
    settings = dict(n_threads=args.threads, device=args.device)
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.school_epochs is not None:
        settings["school_epochs"] = args.school_epochs
    report = {"real": {**{f"icc_{v}": round(icc(hsb.child, v), 3) for v in VARS},
                       **{f"mean_sd_{v}": [round(float(hsb.child[v].mean()), 3), round(float(hsb.child[v].std()), 3)]
                          for v in VARS},
                       "mean_school_size": round(float(hsb.cluster_sizes().mean()), 1)},
              "real_vs_real_icc_similarity_band": reference_band(hsb, args.splits),
              "default": run(hsb, settings, args)}
    if args.control:
        report["control"] = run(hsb, {**settings, "context_students": 0, "school_prefix": False}, args)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
