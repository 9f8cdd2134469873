"""CTGAN and ClavaDDPM on a CUDA GPU against one CPU thread, measured in the same run (issue 15).

    python benchmarks/bench_gpu.py [--study hsb-prediction] [--profile paper] [--dataset hsb] [--json FILE]
                                   [--ctgan-epochs 1 21] [--cpu-ctgan-epochs 1 3]
                                   [--ddpm-steps 200 2200] [--cpu-ddpm-steps 200 700]
                                   [--schools 10 50 160 300] [--reps 5]

The generators get the study's settings under the profile (the paper profile: ClavaDDPM's 200 sampling
steps, CTGAN's networks), with only the number of epochs / training steps and the device changed. For each
device (``cuda`` if torch sees one, and ``cpu`` with one thread, as the studies' workers run):

* CTGAN seconds per epoch: ``(fit(E2) - fit(E1)) / (E2 - E1)``, so the data transform that every fit does
  once cancels; the projection to the profile's epochs is ``fit(E1) + (epochs - E1) * per_epoch``;
* ClavaDDPM seconds per training step (the three networks, each trained ``steps`` steps) by the same
  difference, and its projection to the profile's steps;
* each generator is fitted once more before the timed fits (imports, CUDA context: not counted);
* sampling seconds per data set (median of ``--reps`` seeds, after one warm-up call) for each school count,
  CTGAN (with CLCA) and ClavaDDPM.

Without a GPU only the CPU rows are printed.

Measured 2026-12-04 on a lent machine (NVIDIA H200, 16 cores; torch 2.11 + CUDA 13; the image's pandas 3
replaced by 2.3.3), ``--ctgan-epochs 1 11 --ddpm-steps 200 1200 --schools 10 50 300 --reps 3``, one run
(the CPU rows of ClavaDDPM were cut off by the loan's time limit):

=========  ======  ===========================  ==============================  ========================
generator  device  training                     projected (paper: 1600 epochs,  sample s per data set
                                                20000 steps)                    (10 / 50 / 300 schools)
=========  ======  ===========================  ==============================  ========================
ctgan      cuda    0.159 s per epoch            260 s                           0.049 / 0.076 / 0.366
ctgan      cpu 1   1.227 s per epoch            1,968 s                         0.069 / 0.131 / 0.502
clavaddpm  cuda    2.66 ms per step (3 nets)    69 s                            0.436 / 0.504 / 0.533
=========  ======  ===========================  ==============================  ========================

CTGAN trains 7.7x faster on the GPU and samples 1.4-1.7x faster. ClavaDDPM's small networks are bound by
kernel launches on the GPU: the 2-core machine's one core needs about 3.1 ms per step (20,000 steps in
62 s) and samples 10 / 50 / 300 schools in 0.15 / 0.42 / 2.1 s, so the CPU wins below about 50 schools per
data set. The book's "Rerun a notebook, fork the study" page turns this into advice.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mlsimkit import study as study_mod
from mlsimkit import datasets
from mlsimkit.generators import make


def _fit_seconds(name: str, settings: dict, data, **over) -> tuple:
    gen = make(name, **{**settings, **over})
    t = time.perf_counter()
    gen.fit(data)
    return time.perf_counter() - t, gen


def _sample_seconds(gen, schools, reps) -> dict:
    out = {}
    for n in schools:
        gen.sample(n, seed=999)  # warm-up: the GPU copy of the networks, kernels
        ts = []
        for r in range(reps):
            t = time.perf_counter()
            gen.sample(n, seed=r)
            ts.append(time.perf_counter() - t)
        out[n] = statistics.median(ts)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="hsb-prediction")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--dataset", default="hsb", help="a shipped data set the study's generators can train on")
    ap.add_argument("--ctgan-epochs", type=int, nargs=2, default=[1, 21])
    ap.add_argument("--cpu-ctgan-epochs", type=int, nargs=2, default=[1, 3])
    ap.add_argument("--ddpm-steps", type=int, nargs=2, default=[200, 2200])
    ap.add_argument("--cpu-ddpm-steps", type=int, nargs=2, default=[200, 700])
    ap.add_argument("--schools", type=int, nargs="+", default=[10, 50, 160, 300])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    study = study_mod.load(args.study, args.profile)
    data = datasets.load(args.dataset)
    specs = study["generators"]
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"study {args.study}, profile {args.profile}; GPU: {gpu}; torch {torch.__version__}")
    res = {"gpu": gpu, "study": args.study, "profile": args.profile, "devices": {}}
    for dev in devices:
        r = res["devices"][dev] = {}
        if "ctgan" in specs:
            s = dict(specs["ctgan"], device=dev, n_threads=1)
            e1, e2 = args.ctgan_epochs if dev == "cuda" else args.cpu_ctgan_epochs
            _fit_seconds("ctgan", s, data, epochs=e1)  # warm-up: imports, CUDA context
            t1, _ = _fit_seconds("ctgan", s, data, epochs=e1)
            t2, gen = _fit_seconds("ctgan", s, data, epochs=e2)
            per = (t2 - t1) / (e2 - e1)
            epochs = int(specs["ctgan"].get("epochs", 30))
            r["ctgan"] = {"fit_s": {e1: t1, e2: t2}, "s_per_epoch": per, "epochs": epochs,
                          "projected_fit_s": t1 + (epochs - e1) * per,
                          "sample_s": _sample_seconds(gen, args.schools, args.reps)}
            print(f"[{dev}] ctgan: {per:.4f} s/epoch; fit({e1}) {t1:.1f} s; projected {epochs} epochs "
                  f"{r['ctgan']['projected_fit_s']:.0f} s; sample {r['ctgan']['sample_s']}", flush=True)
        if "clavaddpm" in specs:
            s = dict(specs["clavaddpm"], device=dev, n_threads=1)
            s1, s2 = args.ddpm_steps if dev == "cuda" else args.cpu_ddpm_steps
            _fit_seconds("clavaddpm", s, data, steps=s1)  # warm-up
            t1, _ = _fit_seconds("clavaddpm", s, data, steps=s1)
            t2, gen = _fit_seconds("clavaddpm", s, data, steps=s2)
            per = (t2 - t1) / (s2 - s1)
            steps = int(specs["clavaddpm"].get("steps", 2000))
            r["clavaddpm"] = {"fit_s": {s1: t1, s2: t2}, "s_per_step": per, "steps": steps,
                              "sample_steps": specs["clavaddpm"].get("sample_steps"),
                              "projected_fit_s": t1 + (steps - s1) * per,
                              "sample_s": _sample_seconds(gen, args.schools, args.reps)}
            print(f"[{dev}] clavaddpm: {per * 1e3:.2f} ms/step; fit({s1}) {t1:.1f} s; projected {steps} steps "
                  f"{r['clavaddpm']['projected_fit_s']:.0f} s; sample {r['clavaddpm']['sample_s']}", flush=True)
    if len(devices) == 2:
        for g in ("ctgan", "clavaddpm"):
            if g in res["devices"]["cpu"]:
                c, d = res["devices"]["cpu"][g], res["devices"]["cuda"][g]
                ratios = {n: c["sample_s"][n] / d["sample_s"][n] for n in args.schools}
                print(f"{g}: training {c['projected_fit_s'] / d['projected_fit_s']:.1f}x faster on the GPU; "
                      f"sampling {', '.join(f'{n} schools {v:.1f}x' for n, v in ratios.items())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
