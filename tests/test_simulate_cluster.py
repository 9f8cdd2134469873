"""A study names its Dask cluster under ``simulation:`` (:mod:`mlsimkit.simulate.cluster`): the address or the
dask-jobqueue spec reaches :func:`mlsimkit.simulate.run`; a cluster the run starts is scaled and closed.
No cluster is started here (tests/test_simulate_dask.py runs one)."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import mlsimkit.simulate as simulate
import mlsimkit.study as st
import mlsimkit.workflow as wf
from mlsimkit.errors import ParamsError
from mlsimkit.simulate import SimulationError
from mlsimkit.simulate.cluster import check_address, make_cluster, scheduler_for

ROOT = Path(__file__).resolve().parents[1]


def _study(tmp_path, **simulation):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    path = tmp_path / "params" / "hsb-prediction.yml"
    spec = yaml.safe_load(path.read_text())
    spec["profiles"]["quick"]["simulation"].update(simulation)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return st.load("hsb-prediction", "quick", tmp_path)


@pytest.mark.parametrize("address, ok", [
    ("tcp://127.0.0.1:8786", True), ("tcp://head-node.cluster.local:8786", True), ("tls://[::1]:8786", True),
    (" tcp://host:1 ", True), ("host:8786", False), ("tcp://host", False), ("tcp://host:0", False),
    ("tcp://host:65536", False), ("http://host:8786", False), ("tcp://-host:8786", False), (8786, False),
])
def test_scheduler_addresses(address, ok):
    assert (check_address(address) is None) == ok, check_address(address)


class _FakeCluster:
    made: list = []

    def __init__(self, **settings):
        self.settings, self.jobs, self.closed = settings, None, False
        _FakeCluster.made.append(self)

    def scale(self, jobs):
        self.jobs = jobs

    def close(self):
        self.closed = True


@pytest.fixture
def fake_jobqueue(monkeypatch):
    _FakeCluster.made = []
    monkeypatch.setitem(sys.modules, "dask_jobqueue", types.SimpleNamespace(SLURMCluster=_FakeCluster,
                                                                            PBSCluster=_FakeCluster))
    return _FakeCluster.made


def test_a_jobqueue_cluster_is_started_scaled_and_closed(fake_jobqueue):
    sim = {"backend": "dask", "cluster": {"kind": "slurm", "cores": 4, "memory": "16GB", "jobs": 3,
                                          "walltime": "01:00:00"}}
    with scheduler_for(sim) as cluster:
        assert cluster is fake_jobqueue[0] and not cluster.closed
        # one single-threaded worker process per core unless processes is given; other keys pass through
        assert cluster.settings == {"cores": 4, "memory": "16GB", "walltime": "01:00:00", "processes": 4}
        assert cluster.jobs == 3
    assert cluster.closed


def test_missing_dask_jobqueue_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as when not installed
    with pytest.raises(SimulationError, match=r"needs dask-jobqueue.*pip install dask-jobqueue"):
        make_cluster({"kind": "pbs", "cores": 1, "memory": "2GB"})


def test_bad_settings_are_refused_before_anything_starts(fake_jobqueue):
    with pytest.raises(SimulationError, match=r"simulation\.scheduler.*backend: dask"):
        with scheduler_for({"backend": "loky", "scheduler": "tcp://h:8786"}):
            pass
    with pytest.raises(SimulationError, match=r"simulation\.cluster\.kind"):
        make_cluster({"kind": "kubernetes", "cores": 1, "memory": "2GB"})
    assert fake_jobqueue == []


def test_the_params_scheduler_reaches_the_engine(tmp_path, monkeypatch):
    seen = []

    def fake_run(design, generate, analyse, **kw):
        seen.append(kw)
        return pd.DataFrame({"condition": ["c"], "rep": [0], "method": ["m"], "status": ["ok"], "message": [""]})

    monkeypatch.setattr(simulate, "run", fake_run)
    truth = pd.DataFrame({"parameter": ["x"], "truth": [0.0]})
    sources = {"a": (None, {}, truth), "b": (None, {}, truth)}
    study = _study(tmp_path, backend="dask", scheduler="tcp://10.1.2.3:8786")
    wf.simulate(study, None, source_list=sources)
    assert [(kw["backend"], kw["scheduler"]) for kw in seen] == [("dask", "tcp://10.1.2.3:8786")] * 2

    seen.clear()
    wf.simulate(_study(tmp_path / "b"), None, source_list=sources)  # the quick profile: serial, no scheduler
    assert [(kw["backend"], kw["scheduler"]) for kw in seen] == [("serial", None)] * 2


def test_a_params_cluster_is_started_once_for_all_sources(tmp_path, monkeypatch, fake_jobqueue):
    seen = []
    monkeypatch.setattr(simulate, "run", lambda *a, **kw: seen.append(kw["scheduler"]) or pd.DataFrame(
        {"condition": ["c"], "rep": [0], "method": ["m"], "status": ["ok"], "message": [""]}))
    truth = pd.DataFrame({"parameter": ["x"], "truth": [np.nan]})
    study = _study(tmp_path, backend="dask", cluster={"kind": "slurm", "cores": 2, "memory": "8GB", "jobs": 2})
    wf.simulate(study, None, source_list={"a": (None, {}, truth), "b": (None, {}, truth)})
    assert len(fake_jobqueue) == 1 and seen == [fake_jobqueue[0]] * 2 and fake_jobqueue[0].closed


def test_a_bad_scheduler_in_params_stops_the_stage_naming_file_and_key(tmp_path):
    study = _study(tmp_path, backend="serial", scheduler="tcp://10.1.2.3:8786")
    with pytest.raises(ParamsError, match=r"hsb-prediction\.yml.*simulation\.scheduler.*backend: dask"):
        wf.simulate(study, None, source_list={})
