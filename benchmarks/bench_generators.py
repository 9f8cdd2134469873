"""Generators on HSB: training time, students sampled per second (fresh vs pooled), and CTGAN's
school-level fidelity under CLCA, the naive alignment and none.

    python benchmarks/bench_generators.py [--generators ctgan parametric bootstrap clavaddpm]
                                          [--epochs 30] [--reps 5] [--pool-size 5000] [--seeds 5]
                                          [--fast-fit]

Figures printed (medians over ``--reps`` timed calls; the machine is shared, so expect noise):

* ``fit_s``: training time on HSB (160 schools, 7,185 students);
* ``fresh students/s``: ``generator.sample(160, seed=s)`` per replication;
* ``pool build_s`` and ``pooled students/s``: ``SchoolPool(generator, pool_size).build()`` once, then
  ``pool.sample(160, seed=s)`` per replication;
* for CTGAN: per school-level variable, the KS complement (numerical) or TV complement (categorical)
  of the synthetic school table against the real one, under each alignment applied to the same raw
  CTGAN rows (``--seeds`` samples of 160 schools), plus CP-SAT status and solve time;
* saved-model round trip, per generator and for its pool: seconds of ``save`` and ``load`` (fastest of
  at least 15 interleaved calls, 60 for round trips under 10 ms) in the safe format
  (:mod:`mlsimkit.generators.modelfile`: JSON metadata + raw arrays, content hash checked on load)
  against pickling the same object atomically as format version 2 did, the file sizes and the ratio of
  the round trips.
  ``--fast-fit`` trains the diffusion model for 200 steps per network (same network sizes, so the same
  file size; for timing the round trip without a minute of training).

Measured 2026-11-23 on the 2-core machine, idle apart from this benchmark (HSB, 160 schools per data set;
single runs for training, medians of 5-20 calls for sampling; torch's default two threads):

==========  =============  ==================  ==================  =================
generator   fit            fresh students/s    pool(5000) build    pooled students/s
==========  =============  ==================  ==================  =================
bootstrap   0.0015 s       1.4e6               0.19 s              1.4e6
parametric  1.3 s          8.0e5               0.35 s              1.4e6
ctgan       95 s (50 ep.)  2.3e4               20 s                1.3e6
clavaddpm   63 s           2.4e4               7.3 s               1.2e6
==========  =============  ==================  ==================  =================

Saved-model round trip (2026-12-03, format version 6: one file laid out as a safetensors file, a prefix
``MLSIMKIT`` + version + metadata length, then metadata.json and the raw buffer of arrays, written with one
call and read with two, no zip; otherwise as version 5 after issue 16: the state inside metadata.json, the
schema stored once, string-keyed dicts as JSON objects, the content hash of metadata.json's bytes as
written; the machine shared with other jobs (a book build); ``--epochs 2 --fast-fit --pool-size 2000``;
"pickle" is an atomic pickle of the generator, what format version 2 did; "v5" is the ratio of format
version 5, a zip archive, measured the same way; "before" the ratio before issue 16's changes to the codec):

=======================  ======  ======  ======  ======  =====  ====  ======  =====  ==========
model                    save    load    pickle  pickle  ratio  v5    before  MB     pickle MB
                                         save    load
=======================  ======  ======  ======  ======  =====  ====  ======  =====  ==========
bootstrap                0.0046  0.0046  0.0042  0.0024  1.42   1.76  2.7     0.24   0.23
pool(2000) of bootstrap  0.036   0.026   0.043   0.019   1.00   1.35  1.65    4.10   3.98
parametric               0.0013  0.0007  0.0011  0.0003  1.48   2.29  6.9     0.006  0.005
pool(2000) of parametr.  0.034   0.026   0.041   0.017   1.03   1.24  1.69    3.87   3.75
clavaddpm                0.0070  0.0218  0.0107  0.0082  1.53   1.37  1.77    0.40   0.41
pool(2000) of clavaddpm  0.037   0.049   0.053   0.035   0.99   1.12  1.55    4.14   4.03
ctgan                    0.025   0.026   0.019   0.019   1.38   1.26  1.45    2.16   2.16
pool(2000) of ctgan      0.045   0.045   0.053   0.032   1.06   1.18  1.50    6.01   5.89
=======================  ======  ======  ======  ======  =====  ====  ======  =====  ==========

Seconds, fastest of 15 interleaved calls (60 for round trips under 10 ms); "ratio" is (save + load) /
(pickle save + pickle load). The rows of bootstrap, parametric and their pools are from a later run of
2026-12-03 (after the cuts described at the end of this paragraph; the median one of seven, on the machine
shared with two other jobs, load average 3-4 on its 2 cores, so every time is up to twice the quiet one);
the clavaddpm and ctgan rows from the first run, before those cuts, whose other rows were (seconds as
above) bootstrap 0.0042 / 0.0044 / 0.0032 / 0.0022, ratio 1.59; its pool 1.21; parametric 0.0007 / 0.0005
/ 0.0004 / 0.0002, ratio 2.09; its pool 1.05. Another run of that code gave 1.67 / 1.13 / 1.96 / 1.07 /
1.36 / 1.08 / 1.11 / 1.26 in the same order (the two runs' parametric ratios 2.09 and 1.96: median 2.03).
Every model but the smallest cost 1.0-1.7 times pickle's round trip then (after the cuts, every one
remeasured does). Format version 3 wrote one ``.npy`` member per array (bootstrap 6.7,
pools up to 2.1 times pickle); version 4 put the arrays in one raw member read with ``numpy.frombuffer``;
issue 16 cut the fixed cost, version 5 the format's (the parametric file is 6.4 KB, from 11 KB: its schema
was stored twice), and version 6 the zip container. The parametric model was then at about 2x: its round
trip was about 1.15-1.2 ms against pickle's 0.57-0.59 ms. Where it goes (fastest of 400 calls of each step
in a loop, on this machine): save 0.60 ms = the atomic write (temporary file, write, rename) 0.15-0.18,
which pickle pays as well; the JSON dump of metadata and state with the content hash and its HMAC
0.12; encoding the state (about 40 nodes and 9 arrays) 0.09; finding the signing key 0.01; the schema's
dict 0.01 (the zip container cost 0.07-0.09 here in version 5). Load 0.45 ms = reading the file 0.02
(parsing the zip archive cost 0.09-0.12); parsing the JSON 0.06-0.08; rebuilding and validating the
schema (``Schema.from_dict``, 13 columns) 0.11-0.13; decoding the rest of the state (every array record
checked for bounds, length and overlap) 0.13-0.16; the member checks and the two hash checks 0.01. Pickle
does all but the write in about 0.25 ms of C. The schema alone costs about 0.17 ms of the round trip (its
dict, its JSON both ways, its validation); the validation also runs whenever a caller passes the study's
schema (the model cache does), so dropping it would only speed up a bare ``load()``.

Later on 2026-12-03 (the machine shared, as above), without changing the file (byte-identical) or any
check: the schema's JSON text is reused between saves of the same unchanged schema object (its parts
compared by identity), and :meth:`Schema.from_dict` validates a schema once per process for each exact
JSON text (each load still gets its own schema object; ``0`` and ``0.0`` are different texts); an array
record is checked with plain type tests and read with one ``numpy.ndarray`` constructor (the 9 arrays:
0.05 -> 0.02 ms); lists and dicts of plain values pass through the codec as they are; the atomic write
draws its temporary name itself and writes with ``os.write`` (``tempfile.mkstemp`` and a file object cost
0.02 of its 0.11 ms); the signing key is found with one stat, the file opened without one. Six runs of
this benchmark interleaved with six of the code before gave parametric round-trip ratios (before / after)
1.87 / 1.46, 1.81 / 1.24, 2.01 / 1.48, 1.76 / 1.67, 1.66 / 1.48, 2.06 / 1.51 (plus 1.66 after: medians
1.84 and 1.48); bootstrap 1.67 -> 1.41 (medians; 1.10-2.41 after, the machine being busy); the pools stay
at about 1.0. In a loop of 300 interleaved round trips (the ratio of the fastest calls) the parametric model
went from 1.92-1.95 to 1.48-1.52. In tight loops on the busy machine the schema now costs about 0.05 ms of
the parametric round trip (the dump that keys it on load, its parse, the reused text on save), encoding and
decoding the state 0.05 each; the rest is JSON in C, the hashes and the file system.
Files are 1-10% larger than the pickles (string columns are stored as one UTF-8 buffer, repeated strings once).

The diffusion generator samples 26,000-31,000 students/s on *one* thread (``bench_diffusion.py``), the
setting the study params use.

CTGAN with torch's default two threads on a busy machine (earlier run): 1230 s for 30 epochs (64 s per
epoch, against 4 s single-threaded; hence ``n_threads=1``). CLCA vs naive vs none (mean KS / TV
complement over the six school-level variables): 1.000 / 0.648 / 0.862 at 160 schools (1.000 / 0.615 /
0.854 in an earlier run), 0.992 / 0.653 / 0.903 at 60, 0.999 / 0.651 / 0.920 at 500. CP-SAT: OPTIMAL
for Sector and HIMINTY in every sample, 0.03-0.09 s at 160 schools, 6-8 s per variable at 5,000 schools.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
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


def round_trip(label: str, gen, reps: int, folder: Path) -> dict:
    """Fastest-of-``reps`` (interleaved) save / load seconds of the safe format and of a pickle of the same
    generator written as format version 2 did (atomically, a dict around the generator)."""
    from mlsimkit.generators import load
    from mlsimkit.io import atomic_path

    safe, pkl = folder / f"{label}.zip", folder / f"{label}.pkl"

    def pickle_save(_):
        with atomic_path(pkl) as tmp, open(tmp, "wb") as fh:
            pickle.dump({"format_version": 2, "generator": gen}, fh, protocol=pickle.HIGHEST_PROTOCOL)

    def pickle_load(_):
        with open(pkl, "rb") as fh:
            return pickle.load(fh)["generator"]

    # fastest of ``reps`` calls each, the four kinds of call interleaved so that a burst of other jobs on a
    # shared machine slows both formats alike; sub-10 ms round trips get 60 rounds (under a second)
    fns = [lambda r: gen.save(safe), pickle_save, lambda r: load(safe), pickle_load]
    best = [timed(fn, 1)[0] for fn in fns]
    rounds = max(reps, 60) if sum(best) < 0.01 else reps
    for _ in range(rounds - 1):
        best = [min(b, timed(fn, 1)[0]) for b, fn in zip(best, fns)]
    save_s, psave_s, load_s, pload_s = best
    return {"model": label, "save_s": save_s, "load_s": load_s, "pickle_save_s": psave_s,
            "pickle_load_s": pload_s, "round_trip_ratio": (save_s + load_s) / (psave_s + pload_s),
            "MB": safe.stat().st_size / 1e6, "pickle_MB": pkl.stat().st_size / 1e6}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generators", nargs="+", default=["bootstrap", "parametric", "ctgan", "clavaddpm"])
    ap.add_argument("--epochs", type=int, default=30, help="CTGAN epochs")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pool-size", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=5, help="CTGAN samples for the alignment comparison")
    ap.add_argument("--n-clusters", type=int, default=160)
    ap.add_argument("--fast-fit", action="store_true", help="clavaddpm: 200 steps per network")
    args = ap.parse_args(argv)

    hsb = ds.load("hsb")
    n = args.n_clusters
    rows, trips = [], []
    fitted = {}
    for name in args.generators:
        settings = {"epochs": args.epochs} if name == "ctgan" else {}
        if name == "clavaddpm" and args.fast_fit:
            settings = {"steps": 200, "school_steps": 200, "classifier_steps": 200, "n_threads": 1}
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
        with tempfile.TemporaryDirectory() as tmp:
            trips.append(round_trip(name, gen, max(args.reps, 15), Path(tmp)))
            trips.append(round_trip(f"pool({args.pool_size}) of {name}", pool, max(args.reps, 15), Path(tmp)))
        rows.append({
            "generator": name, "fit_s": fit_s, "fresh_s_per_dataset": fresh_s,
            "fresh_students_per_s": n_students / fresh_s, "pool_size": args.pool_size,
            "pool_build_s": build_s, "pooled_s_per_dataset": pooled_s,
            "pooled_students_per_s": len(dp.child) / pooled_s,
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    print("\n== training and sampling on HSB (n_clusters = %d) ==" % n)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\n== saved-model round trip: safe format (JSON metadata + raw arrays) vs pickle ==")
    print(pd.DataFrame(trips).to_string(index=False, float_format=lambda v: f"{v:.3g}"))

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
