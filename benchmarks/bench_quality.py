"""Time of the Stage 3 quality report on HSB-sized data (160 schools, 7,185 students), on the cores available.

    .venv/bin/python benchmarks/bench_quality.py [--k 1] [--splits 5] [--bootstrap 20]

Prints: the full report without ML efficacy (one synthetic data set, the real-vs-real reference with
``--splits`` halvings, ``--bootstrap`` draws over schools, figures and HTML), target <= 30 s on 2 cores; and
ML efficacy alone (fast and full settings; built-in and mlsimkit.lmm mixed-model engines).
The "synthetic" data set is a bootstrap of real schools (the metric cost does not depend on the generator).
"""

import argparse
import os
import tempfile
import time

import numpy as np

import mlsimkit.datasets as ds
from mlsimkit import quality
from mlsimkit.quality._common import resample_schools
from mlsimkit.quality.efficacy import _mixed_engine, efficacy_rows

ap = argparse.ArgumentParser()
ap.add_argument("--k", type=int, default=1)
ap.add_argument("--splits", type=int, default=5)
ap.add_argument("--bootstrap", type=int, default=20)
args = ap.parse_args()

real = ds.load("hsb")
syn = {"bootstrap": [resample_schools(real, np.random.default_rng(i)) for i in range(args.k)]}
print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
t, c = time.perf_counter(), time.process_time()
rep = quality.evaluate(real, syn, reference_splits=args.splits, bootstrap=args.bootstrap, efficacy=False)
t_eval = time.perf_counter() - t
c_eval = time.process_time() - c
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    rep.to_html(os.path.join(d, "q.html"))
    t_html = time.perf_counter() - t
print(f"report without ML efficacy (k={args.k}, splits={args.splits}, bootstrap={args.bootstrap}): "
      f"{t_eval + t_html:.1f} s  (metrics {t_eval:.1f} s wall / {c_eval:.1f} s CPU, figures + HTML {t_html:.1f} s; "
      "target <= 30 s; wall time depends on the machine's load, CPU time much less)")
for k, v in rep.timings.items():
    print(f"   {k:28s} {v:6.1f} s")
from threadpoolctl import threadpool_limits

engines = ["builtin"] + (["mlsimkit.lmm"] if _mixed_engine() == "mlsimkit.lmm" else [])
for mode in ("fast", "full"):
    for engine in engines:
        with threadpool_limits(1):
            t = time.perf_counter()
            rows = efficacy_rows(real, syn["bootstrap"][0], mode=mode, engine=engine)
            dt = time.perf_counter() - t
        print(f"ML efficacy, {mode:4s}, mixed engine {engine:12s}: {dt:6.1f} s  ({len(rows)} target x model scores, "
              "TRTR fits included; further synthetic sets reuse them)")
