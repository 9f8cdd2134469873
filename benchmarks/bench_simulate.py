"""Benchmark of the Stage 4 engine: overhead per replication and scaling from 1 to 2 workers.

    .venv/bin/python benchmarks/bench_simulate.py [--reps 1000] [--busy-ms 10] [--no-dask]

* Overhead: a trivial generate (one uniform draw) and a trivial analyse (returns a constant row), so the
  time per replication is what the engine itself costs: seeding two streams, calling the method under
  warning capture, building the shard table, (optionally) writing Parquet.  Pools are started before
  timing (pool start-up is reported separately).
* Scaling: each replication burns ``--busy-ms`` of CPU in analyse; speed-up = time(1 worker) /
  time(2 workers) for loky and for Dask (a LocalCluster of single-threaded worker processes), with
  warm workers (a cold worker first spends 1-2 s importing numpy, pandas, scipy and the package, which
  a study of a few seconds does notice; loky keeps its workers between runs in one session).

Prints a table; not a pass/fail test.  Numbers depend on how many cores are really free.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from functools import partial

from mlsimkit.simulate import Design, run
from mlsimkit.simulate import examples as ex


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=1000, help="replications per condition (4 conditions)")
    ap.add_argument("--busy-ms", type=float, default=10.0, help="CPU per replication in the scaling test")
    ap.add_argument("--scaling-reps", type=int, default=100, help="replications per condition, scaling test")
    ap.add_argument("--no-dask", action="store_true")
    a = ap.parse_args()
    design = Design({"c": [1, 2, 3, 4]})
    n = len(design) * a.reps
    trivial = dict(design=design, generate=ex.trivial_sample, analyse={"t": ex.trivial}, reps=a.reps,
                   block_size=50)
    print(f"cores visible: {os.cpu_count()}  replications: {n} (4 conditions x {a.reps})")
    rows = []

    run(**{**trivial, "reps": 5})  # imports
    t, _ = timed(lambda: run(**trivial))
    rows.append(("serial, in memory", t, n))
    with tempfile.TemporaryDirectory() as d:
        t, _ = timed(lambda: run(**trivial, store=os.path.join(d, "s")))
        rows.append(("serial, Parquet store", t, n))
        t, _ = timed(lambda: run(**trivial, store=os.path.join(d, "s")))
        rows.append(("serial, resume (all shards done)", t, n))

    for k in (1, 2):
        t0, _ = timed(lambda: run(**{**trivial, "reps": 2, "block_size": 1}, backend="loky", n_jobs=k))
        t, _ = timed(lambda: run(**trivial, backend="loky", n_jobs=k))
        rows.append((f"loky n_jobs={k} (warm pool; cold start {t0:.2f} s)", t, n))

    clusters = {}
    if not a.no_dask:
        from distributed import Client, LocalCluster

        for k in (1, 2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                cluster = LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None)
                client = Client(cluster)
                start = time.perf_counter() - t0
            clusters[k] = (cluster, client)
            run(**{**trivial, "reps": 2, "block_size": 1}, backend="dask", scheduler=client)
            t, _ = timed(lambda: run(**trivial, backend="dask", scheduler=client))
            rows.append((f"dask {k} worker(s) (cluster start {start:.2f} s)", t, n))

    print("\nEngine overhead (trivial generate + analyse)")
    print(f"{'configuration':58s} {'total s':>8s} {'us / rep':>9s}")
    for name, t, m in rows:
        print(f"{name:58s} {t:8.2f} {1e6 * t / m:9.0f}")

    busy = dict(design=design, generate=ex.trivial_sample, analyse={"b": partial(ex.busy, seconds=a.busy_ms / 1000)},
                reps=a.scaling_reps, block_size=5)
    m = len(design) * a.scaling_reps
    print(f"\nScaling: {m} replications x {a.busy_ms:g} ms CPU (ideal serial {m * a.busy_ms / 1000:.1f} s)")
    t_serial, ref = timed(lambda: run(**busy))
    print(f"{'serial':26s} {t_serial:7.2f} s")
    for backend in ("loky",) + (() if a.no_dask else ("dask",)):
        times = {}
        for k in (1, 2):
            extra = {"n_jobs": k} if backend == "loky" else {"scheduler": clusters[k][1]}
            # warm-up: every worker imports the analysis modules once (about 1-2 s per process)
            run(**{**busy, "reps": 2 * k, "block_size": 1}, backend=backend, **extra)
            times[k], res = timed(lambda: run(**busy, backend=backend, **extra))
            assert res.drop(columns="fit_time").equals(ref.drop(columns="fit_time")), "results differ"
        print(f"{backend + ' 1 worker':26s} {times[1]:7.2f} s")
        print(f"{backend + ' 2 workers':26s} {times[2]:7.2f} s   speed-up 1->2: {times[1] / times[2]:.2f}x")
    for cluster, client in clusters.values():
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
