"""Naming a Dask cluster from a study's params file.

A study runs its simulations on a cluster by saying so under ``simulation:``::

    simulation:
      backend: dask
      scheduler: tcp://head-node:8786      # a running scheduler (``dask scheduler`` + ``dask worker``s)

or, to have the run start and stop its own batch-system workers through dask-jobqueue::

    simulation:
      backend: dask
      cluster: {kind: slurm, cores: 1, processes: 1, memory: 4GB, jobs: 20, walltime: "02:00:00"}

``kind`` picks the dask-jobqueue class (:data:`JOBQUEUE_KINDS`), ``jobs`` how many batch jobs to ask for
(``cluster.scale(jobs=...)``); every other key goes to the class's constructor (``queue``, ``account``,
``walltime``, ``job_extra_directives``, ...). dask-jobqueue is imported only when a cluster is started.

The workers import :mod:`mlsimkit` and read the trained generators from the run folder, so the cluster
needs the same environment and a file system shared with the machine that runs the stage. Give each worker
process one thread (``dask worker --nthreads 1``; ``cores`` = ``processes`` for jobqueue): warnings are
captured per method call, which is process-global.

:func:`check_address` and :func:`check_cluster` return problems (``mlsimkit check`` reports them with the
key path); :func:`scheduler_for` turns the ``simulation:`` mapping into what
:func:`mlsimkit.simulate.run` takes as ``scheduler`` and closes a cluster it started.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Mapping

from .engine import SimulationError

#: ``simulation.cluster.kind`` -> the dask-jobqueue class that starts its workers as batch jobs.
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                  "htcondor": "HTCondorCluster", "moab": "MoabCluster", "oar": "OARCluster"}
#: Keys of ``simulation.cluster`` checked here; any other key is passed to the dask-jobqueue class.
CLUSTER_KEYS = ("kind", "cores", "memory", "jobs", "processes")
PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss")

_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
_ADDRESS = re.compile(rf"^(?P<proto>[A-Za-z]+)://(?P<host>{_HOST}):(?P<port>[0-9]+)$")
_MEMORY = re.compile(r"^\s*[0-9]+(?:\.[0-9]+)?\s*(?:[KMGTP]i?B|[kKMGTP])\s*$")


def check_address(address: Any, *, inproc: bool = False) -> str | None:
    """None when ``address`` is a Dask scheduler address ``protocol://host:port`` (protocol one of
    :data:`PROTOCOLS`, port 1..65535), else what is wrong with it. ``inproc``: also accept the in-process
    addresses of a ``LocalCluster(processes=False)`` (``inproc://...``), meaningless in a params file."""
    expected = "expected a Dask scheduler address such as 'tcp://host:8786'"
    if not isinstance(address, str):
        return f"{expected}, got {address!r}"
    if inproc and address.strip().startswith("inproc://"):
        return None
    m = _ADDRESS.match(address.strip())
    if m is None:
        return f"{expected} (protocol://host:port), got {address!r}"
    if m["proto"].lower() not in PROTOCOLS:
        return f"{expected}: protocol {m['proto']!r} is not one of {list(PROTOCOLS)}"
    if not 1 <= int(m["port"]) <= 65535:
        return f"{expected}: port {m['port']} is not in 1..65535"
    return None


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def check_cluster(spec: Any) -> list[tuple[str, str]]:
    """Problems of a ``simulation.cluster`` mapping as ``(key path, message)`` pairs (empty: fine)."""
    key = "simulation.cluster"
    if not isinstance(spec, Mapping):
        return [(key, f"expected a mapping such as {{kind: slurm, cores: 1, memory: 4GB, jobs: 10}}, got {spec!r}")]
    out = []
    kind = spec.get("kind")
    if kind not in JOBQUEUE_KINDS:
        out.append((f"{key}.kind", f"expected one of {list(JOBQUEUE_KINDS)} (a dask-jobqueue cluster), got {kind!r}"))
    for k in ("cores", "jobs", "processes"):
        if k in spec and not _pos_int(spec[k]):
            out.append((f"{key}.{k}", f"expected a positive integer, got {spec[k]!r}"))
    for k in ("cores", "memory"):
        if k not in spec:
            out.append((f"{key}.{k}", "required by dask-jobqueue (cores and memory of one job)"))
    if "memory" in spec and not (isinstance(spec["memory"], str) and _MEMORY.match(spec["memory"])):
        out.append((f"{key}.memory", f"expected a size such as '4GB' or '16GiB', got {spec['memory']!r}"))
    if "processes" in spec and _pos_int(spec.get("processes")) and _pos_int(spec.get("cores")) \
            and spec["processes"] > spec["cores"]:
        out.append((f"{key}.processes", f"expected at most cores ({spec['cores']}) worker processes per job, got "
                                        f"{spec['processes']}"))
    return out


def check_simulation(sim: Mapping) -> list[tuple[str, str]]:
    """Problems of the cluster keys of a ``simulation:`` mapping (``scheduler``, ``cluster``) with its
    ``backend``."""
    out = []
    backend = sim.get("backend", "serial")
    for k in ("scheduler", "cluster"):
        if k in sim and backend != "dask":
            out.append((f"simulation.{k}", "names a Dask cluster, so it needs 'backend: dask' (serial and loky run on this machine)"))
    if "scheduler" in sim and "cluster" in sim:
        out.append(("simulation.scheduler", "give either a scheduler address or a cluster spec, not both"))
    if "scheduler" in sim:
        problem = check_address(sim["scheduler"])
        if problem:
            out.append(("simulation.scheduler", problem))
    if "cluster" in sim:
        out.extend(check_cluster(sim["cluster"]))
    return out


def make_cluster(spec: Mapping) -> Any:
    """Start the dask-jobqueue cluster of a ``simulation.cluster`` spec and ask for ``jobs`` jobs (default 1)."""
    problems = check_cluster(spec)
    if problems:
        raise SimulationError("; ".join(f"key '{k}': {m}" for k, m in problems))
    try:
        import dask_jobqueue
    except ImportError:
        raise SimulationError(
            f"simulation.cluster (kind {spec['kind']!r}) needs dask-jobqueue, which is not installed: "
            "pip install dask-jobqueue (or give simulation.scheduler, the address of a running scheduler)"
        ) from None
    settings = {k: v for k, v in spec.items() if k not in ("kind", "jobs")}
    settings.setdefault("processes", settings["cores"])  # one thread per worker process (see the module doc)
    cls = getattr(dask_jobqueue, JOBQUEUE_KINDS[spec["kind"]])
    try:
        cluster = cls(**settings)
    except Exception as err:  # noqa: BLE001 - the batch system's own message, named
        raise SimulationError(f"simulation.cluster: {cls.__name__}({settings}) failed: "
                              f"{type(err).__name__}: {err}") from err
    cluster.scale(jobs=int(spec.get("jobs", 1)))
    return cluster


@contextlib.contextmanager
def scheduler_for(sim: Mapping) -> Iterator[Any]:
    """What :func:`mlsimkit.simulate.run` takes as ``scheduler`` for a ``simulation:`` mapping: its
    ``scheduler`` address, a dask-jobqueue cluster started from its ``cluster`` spec (closed on exit), or
    None (a LocalCluster of ``n_jobs`` workers for backend dask; nothing for the others)."""
    problems = check_simulation(sim)
    if problems:
        raise SimulationError("; ".join(f"key '{k}': {m}" for k, m in problems))
    if "scheduler" in sim:
        yield sim["scheduler"].strip()
    elif "cluster" in sim:
        cluster = make_cluster(sim["cluster"])
        try:
            yield cluster
        finally:
            cluster.close()
    else:
        yield None
