"""The Dask backend against a real cluster: a scheduler and two workers started as separate processes
(``dask scheduler``, ``dask worker``), as on a cluster whose address a study's params file names.

Results must equal the serial run's, also when a worker is killed mid-run. Everything the processes write
(scheduler file, worker spill folders, logs) lives under ``tmp_path``; every process is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from mlsimkit.simulate import Design, SimulationError, run
from mlsimkit.simulate import examples as ex

distributed = pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
DESIGN = Design({"n": [8, 20], "mu": [0.0, 1.0]})
METHODS = {"mean": ex.mean_t_interval, "median": ex.median_estimate, "boot": ex.trimmed_mean_bootstrap}
DEADLINE = 40.0  # seconds for the cluster to come up


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns="fit_time").reset_index(drop=True),
                                  b.drop(columns="fit_time").reset_index(drop=True), check_exact=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def dask_cluster(tmp_path: Path, n_workers: int = 2):
    """``dask scheduler`` on a random localhost port and ``n_workers`` ``dask worker`` processes (one thread,
    no nanny, so killing a worker's process kills the worker); yields (address, worker processes)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    dask = [sys.executable, "-m", "dask"]
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(args, name):
        log = open(tmp_path / f"{name}.log", "wb")
        logs.append(log)
        procs.append(subprocess.Popen(dask + args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    def log_tail() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log")))

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
               str(sched_file)], "scheduler")
        t0 = time.monotonic()
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() - t0 > DEADLINE or procs[0].poll() is not None:
                pytest.fail(f"dask scheduler did not start:\n{log_tail()}")
            time.sleep(0.1)
        time.sleep(0.1)  # the file is written in one go; let it be complete
        address = json.loads(sched_file.read_text())["address"]
        workers = [start(["worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}",
                          "--local-directory", str(tmp_path / f"w{i}")], f"worker{i}") for i in range(n_workers)]
        with distributed.Client(address, timeout=DEADLINE) as client:
            try:
                client.wait_for_workers(n_workers, timeout=DEADLINE)
            except TimeoutError:
                pytest.fail(f"dask workers did not start:\n{log_tail()}")
        yield address, workers
    finally:
        for p in reversed(procs):
            _stop(p)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One scheduler and two workers for this module (starting them and importing mlsimkit on the workers is
    most of the time); the kill test, which leaves one worker, may run last or alone."""
    with dask_cluster(tmp_path_factory.mktemp("dask")) as (address, workers):
        yield address, workers


def test_a_scheduler_started_apart_gives_the_serial_results(cluster, tmp_path):
    address, _ = cluster
    ref = run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=11, backend="serial")
    got = run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=11, backend="dask", scheduler=address, block_size=2)
    stored = run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=11, backend="dask", scheduler=address,
                 block_size=4, store=tmp_path / "store")
    same(ref, got)
    same(ref, stored)


def test_a_study_source_runs_on_the_cluster_as_in_serial(cluster, tmp_path):
    """A Stage 4 source as the workflow builds it (a saved generator the workers load from its path, the
    prediction rules with their mixed-model fits) gives the serial table through the scheduler."""
    import mlsimkit.datasets as ds
    import mlsimkit.demonstrations as demo
    from mlsimkit.generators import SchoolBootstrap
    from mlsimkit.methods import PredictionSpec

    address, _ = cluster
    path = tmp_path / "bootstrap.zip"
    SchoolBootstrap().fit(ds.load("hsb")).save(path)
    spec = PredictionSpec(outcome="MathAch", student=("SES", "Minority", "Sex"), school=("Sector", "MEANSES"),
                          random_slope="SES")
    gen = partial(demo.generate_synthetic, generator_path=str(path))
    methods = demo.analyse_prediction_methods(spec)
    design = {"n_schools": [10, 25]}
    ref = run(design, gen, methods, reps=3, seed=5, backend="serial")
    got = run(design, gen, methods, reps=3, seed=5, backend="dask", scheduler=address, block_size=1)
    assert (ref["status"] == "ok").mean() > 0.5 and ref["pred_error"].notna().any()  # real fits, not errors
    same(ref, got)


def test_a_worker_killed_mid_run_loses_nothing(cluster, tmp_path):
    """SIGKILL one of the two workers once some shards are stored: the scheduler gives its work to the other
    worker and the table equals the serial run's, every replication present once."""
    address, workers = cluster
    if any(w.poll() is not None for w in workers):
        pytest.fail("a worker of the module's cluster is gone before the kill test")
    methods = {"mean": partial(ex.mean_t_interval, sleep=0.25), "median": ex.median_estimate}
    reps, total = 6, 6 * len(DESIGN)  # block_size 1: one shard per replication
    # the sleep only makes shards last long enough to kill a worker inside one; the rows do not depend on it
    ref = run(DESIGN, ex.normal_sample, {"mean": ex.mean_t_interval, "median": ex.median_estimate}, reps=reps, seed=3)
    store = tmp_path / "store"
    seen: dict = {}

    victim = workers[0]
    with distributed.Client(address) as client:
        addr_of = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}

        def kill_after_some_shards():
            """SIGKILL worker w0 while it runs a shard, once at least four shards are stored."""
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60:
                n = len(list(store.glob("shards/*/reps-*.parquet")))
                busy = client.processing(workers=[addr_of["w0"]]).get(addr_of["w0"]) if n >= 4 else None
                if busy:
                    victim.kill()
                    victim.wait(10)
                    seen.update(at=n, in_flight=len(busy))
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_after_some_shards, daemon=True)
        killer.start()
        # the run shares the client the killer watches with (two clients in one process clash over event loops)
        got = run(DESIGN, ex.normal_sample, methods, reps=reps, seed=3, backend="dask", scheduler=client,
                  block_size=1, store=store)
        killer.join(10)
    seen["done"] = len(list(store.glob("shards/*/reps-*.parquet")))
    survivor_alive = workers[1].poll() is None

    assert "at" in seen and seen["at"] < total and seen["in_flight"] >= 1, f"w0 was not killed mid-run: {seen}"
    assert victim.returncode == -9 and survivor_alive
    assert seen["done"] == total
    assert len(got.drop_duplicates(["condition", "rep"])) == total
    same(ref, got)


def test_a_bad_or_unreachable_scheduler_is_named():
    with pytest.raises(SimulationError, match="tcp://host:8786"):
        run(DESIGN, ex.normal_sample, METHODS, reps=1, backend="dask", scheduler="localhost:8786")
    with pytest.raises(SimulationError, match="backend 'dask' only"):
        run(DESIGN, ex.normal_sample, METHODS, reps=1, backend="loky", scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(SimulationError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"):
        import dask

        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            run(DESIGN, ex.normal_sample, METHODS, reps=1, backend="dask", scheduler="tcp://127.0.0.1:9")
