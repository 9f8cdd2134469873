"""The simulation engine: ``run(design, generate, analyse, ...)``.

The shape follows SimDesign's Design / Generate / Analyse / Summarise split (Chalmers & Adkins 2020,
"Writing effective and reliable Monte Carlo simulations with the SimDesign package"): the user writes
``generate(condition, rng)`` and one callable per method, the engine does seeds, scheduling, failure
capture, storage and resume.  Summaries are pure functions of the stored long table
(:mod:`mlsimkit.performance`, rsimsum's model).

Work is cut into *shards*: one condition, one block of consecutive replications.  A shard is the unit
of scheduling, of storage and of resume.  Its rows depend only on (seed, condition, replication,
method name), never on which worker ran it or when, so serial, loky and Dask runs give identical
tables (``fit_time`` aside, which is a measured duration).

Warnings are captured per method call with ``warnings.catch_warnings``, which is process-global: run
Dask workers with one thread each (the default LocalCluster here does) so that two methods never
capture each other's warnings.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from ..errors import MlsimkitError
from . import store as _store
from .design import Condition, Design
from .seeds import data_rng, method_rng

STATUSES = ("ok", "warning", "non-converged", "singular", "error")
BACKENDS = ("serial", "loky", "dask")
POLICIES = ("record", "redraw")
FLOAT_COLUMNS = ("estimate", "se", "ci_lower", "ci_upper", "pred_error")
_ROW_KEYS = {"method", "parameter", *FLOAT_COLUMNS, "status", "message"}


class SimulationError(MlsimkitError):
    """A simulation study was set up wrongly (bad argument, unpicklable callable, ...)."""


# --------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class _Method:
    name: str
    fn: Callable
    takes_rng: bool


def _callable_name(fn: Callable) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _describe(fn: Callable) -> str:
    """A readable identity of a callable for the manifest (module.qualname, partial arguments)."""
    if isinstance(fn, functools.partial):
        args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in fn.keywords.items()]
        return f"partial({_describe(fn.func)}, {', '.join(args)})"
    mod = getattr(fn, "__module__", None) or type(fn).__module__
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{mod}.{qual}"


def _n_positional(fn: Callable, what: str) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 3
    n = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return 99
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            n += 1
    return n


def _methods(analyse: Callable | Mapping[str, Callable]) -> list[_Method]:
    if isinstance(analyse, Mapping):
        items = list(analyse.items())
        if not items:
            raise SimulationError("analyse is an empty dict; give at least one {method_name: callable}")
    elif callable(analyse):
        items = [(_callable_name(analyse), analyse)]
    else:
        raise SimulationError(
            f"analyse must be a callable or a dict {{method_name: callable}}, got {type(analyse).__name__}"
        )
    out = []
    for name, fn in items:
        if not isinstance(name, str) or not name:
            raise SimulationError(f"method names must be non-empty strings, got {name!r}")
        if not callable(fn):
            raise SimulationError(f"method '{name}' is a {type(fn).__name__}, not a callable")
        n = _n_positional(fn, name)
        if n not in (2, 3, 99):
            raise SimulationError(
                f"method '{name}' takes {n} required positional arguments; expected (condition, data) or "
                "(condition, data, rng)"
            )
        out.append(_Method(name, fn, n != 2))
    return out


# ------------------------------------------------------------------------------------------ one shard
@dataclass(frozen=True)
class _Task:
    condition: Condition
    first: int
    last: int  # inclusive
    seed: int
    generate: Callable
    gen_takes_rng: bool
    methods: tuple
    policy: str
    max_redraws: int
    redraw_on: tuple


def _fmt_exc(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _fmt_warnings(caught) -> str:
    seen = []
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def _error_row(message: str) -> dict:
    return {"parameter": None, "status": "error", "message": message}


def _as_rows(out: Any, name: str) -> list[dict]:
    if isinstance(out, pd.DataFrame):
        rows = out.to_dict("records")
    elif isinstance(out, Mapping):
        rows = [dict(out)]
    elif isinstance(out, (list, tuple)) and all(isinstance(r, Mapping) for r in out):
        rows = [dict(r) for r in out]
    else:
        raise TypeError(f"method '{name}' returned {type(out).__name__}; expected a dict, a list of dicts or a "
                        "DataFrame with columns parameter, estimate, se, ci_lower, ci_upper, pred_error, status, "
                        "message")
    if not rows:
        raise ValueError(f"method '{name}' returned no rows")
    for r in rows:
        if "parameter" not in r:
            raise ValueError(f"method '{name}' returned a row without 'parameter': {r}")
        status = r.get("status", "ok")
        if status is None or (isinstance(status, float) and math.isnan(status)):
            status = "ok"
        if status not in STATUSES:
            raise ValueError(f"method '{name}' returned status {status!r}; expected one of {list(STATUSES)}")
        r["status"] = status
    return rows


def _call_method(m: _Method, condition: Condition, data: Any, rng: np.random.Generator) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = m.fn(condition, data, rng) if m.takes_rng else m.fn(condition, data)
            rows = _as_rows(out, m.name)
            err = None
        except Exception as e:  # noqa: BLE001 - a method's failure is data, recorded with its message
            rows, err = [_error_row(_fmt_exc(e))], e
    fit_time = time.perf_counter() - t0
    wtext = _fmt_warnings(caught)
    for r in rows:
        r["warnings"] = wtext
        if err is None and wtext and r["status"] == "ok":
            r["status"] = "warning"
        r.setdefault("message", "")
        if r["message"] is None:
            r["message"] = ""
        r.setdefault("method", m.name)
    return rows, fit_time


def _one_rep(task: _Task, rep: int) -> list[dict]:
    key = task.condition.key
    log = []
    attempts = task.max_redraws + 1 if task.policy == "redraw" else 1
    for attempt in range(attempts):
        rows_rep: list[dict] = []
        try:
            rng = data_rng(task.seed, key, rep, attempt)
            data = task.generate(task.condition, rng) if task.gen_takes_rng else task.generate(task.condition)
            gen_err = None
        except Exception as e:  # noqa: BLE001
            gen_err = f"generate failed: {_fmt_exc(e)}"
        for m in task.methods:
            if gen_err is not None:
                rows, ft = [dict(_error_row(gen_err), warnings="", method=m.name)], 0.0
            else:
                rows, ft = _call_method(m, task.condition, data, method_rng(task.seed, key, rep, m.name, attempt))
            for r in rows:
                r["fit_time"] = ft
            rows_rep.extend(rows)
        failed = [r for r in rows_rep if r["status"] in task.redraw_on]
        if task.policy == "redraw" and failed and attempt < attempts - 1:
            first = failed[0]
            log.append(f"attempt {attempt}: {first['method']}: {first['status']}"
                       + (f" ({first['message']})" if first["message"] else ""))
            continue
        for r in rows_rep:
            r["redraws"] = attempt
            r["redraw_log"] = " | ".join(log)
        return rows_rep
    raise AssertionError("unreachable")  # pragma: no cover


def _shard_frame(task: _Task, rows: list[dict]) -> pd.DataFrame:
    cond = task.condition
    base = ["condition", *cond.keys(), "rep", "method", "parameter", *FLOAT_COLUMNS, "status", "message",
            "warnings", "fit_time", "seed", "redraws", "redraw_log"]
    extras = []
    for r in rows:
        for k in r:
            if k not in base and k not in extras:
                extras.append(k)
    cols: dict[str, Any] = {"condition": [cond.key] * len(rows)}
    for f, v in cond.values.items():
        cols[f] = [v] * len(rows)
    cols["rep"] = np.array([r["rep"] for r in rows], dtype=np.int64)
    cols["method"] = [str(r["method"]) for r in rows]
    cols["parameter"] = [None if r.get("parameter") is None else str(r["parameter"]) for r in rows]
    for c in FLOAT_COLUMNS:
        vals = []
        for r in rows:
            v = r.get(c)
            try:
                vals.append(np.nan if v is None else float(v))
            except (TypeError, ValueError):
                vals.append(np.nan)
        cols[c] = np.array(vals, dtype=np.float64)
    for c in ("status", "message", "warnings"):
        cols[c] = [str(r.get(c, "")) for r in rows]
    cols["fit_time"] = np.array([r["fit_time"] for r in rows], dtype=np.float64)
    cols["seed"] = np.full(len(rows), task.seed, dtype=np.int64)
    cols["redraws"] = np.array([r["redraws"] for r in rows], dtype=np.int64)
    cols["redraw_log"] = [r["redraw_log"] for r in rows]
    for c in extras:
        cols[c] = [r.get(c) for r in rows]
    return pd.DataFrame(cols)


def _run_shard(task: _Task) -> tuple[str, int, pd.DataFrame]:
    rows = []
    for rep in range(task.first, task.last + 1):
        for r in _one_rep(task, rep):
            r["rep"] = rep
            rows.append(r)
    return task.condition.key, task.first, _shard_frame(task, rows)


# ------------------------------------------------------------------------------------------- backends
def _serial(tasks):
    for t in tasks:
        yield _run_shard(t)


def _loky(tasks, n_jobs):
    from joblib import Parallel, delayed

    yield from Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")(
        delayed(_run_shard)(t) for t in tasks
    )


def _dask(tasks, n_jobs, scheduler):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:  # pragma: no cover - optional dependency
        raise SimulationError("backend 'dask' needs dask[distributed]: pip install 'mlsimkit[dask]'") from None
    own_cluster = own_client = None
    if scheduler is None:
        own_cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        client = own_client = Client(own_cluster)
    elif isinstance(scheduler, Client):
        client = scheduler
    elif isinstance(scheduler, str):
        try:
            client = own_client = Client(scheduler)
        except (OSError, TimeoutError) as err:
            raise SimulationError(f"cannot reach the Dask scheduler at '{scheduler}' ({_fmt_exc(err)}); start it "
                                  "(dask scheduler) and its workers (dask worker ADDRESS --nthreads 1), or fix "
                                  "simulation.scheduler") from None
    elif hasattr(scheduler, "scheduler_address"):
        client = own_client = Client(scheduler)
    else:
        raise SimulationError(
            f"scheduler must be a Dask scheduler address such as 'tcp://host:8786', a distributed.Client or a "
            f"cluster object, got {type(scheduler).__name__}"
        )
    try:
        futures = [client.submit(_run_shard, t, pure=False) for t in tasks]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            for f in futures:
                f.cancel()
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def _check_picklable(obj: Any, what: str, backend: str) -> None:
    try:
        import cloudpickle as pickler  # what loky and Dask use
    except ImportError:  # pragma: no cover
        import pickle as pickler
    try:
        pickler.dumps(obj)
    except Exception as err:  # noqa: BLE001
        raise SimulationError(
            f"{what} cannot be sent to {backend} workers because it cannot be pickled ({_fmt_exc(err)}). Define "
            f"it as a top-level function in a module, or bind its settings with functools.partial, or use "
            f"backend='serial'."
        ) from None


# ------------------------------------------------------------------------------------------- progress
def _progress_bar(progress, total, initial):
    from tqdm import tqdm  # plain text bar: tqdm.auto needs ipywidgets inside notebooks

    if progress is None:
        interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        progress = interactive and not os.environ.get("CI")
    return tqdm(total=total, initial=initial, disable=not progress, unit="rep", desc="simulate",
                dynamic_ncols=True, leave=True)


# ------------------------------------------------------------------------------------------------ run
def _lock(root: Path) -> Path:
    lock = root / ".lock"
    if lock.exists():
        try:
            pid = int(lock.read_text().strip() or 0)
        except ValueError:
            pid = 0
        alive = False
        if pid and pid != os.getpid():
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        if alive:
            raise _store.StoreError(
                f"store '{root}' is being written by another run (process {pid}); wait for it to finish, or "
                f"delete '{lock}' if that process is gone"
            )
    lock.write_text(str(os.getpid()))
    return lock


def _clean_temporaries(root: Path) -> None:
    # Half-written shards of a killed run: temporary names never read as results.
    for tmp in (root / "shards").glob("*/.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def run(
    design: Design | Mapping | Iterable[Mapping],
    generate: Callable,
    analyse: Callable | Mapping[str, Callable],
    reps: int = 100,
    seed: int = 2026,
    backend: str = "serial",
    n_jobs: int = 2,
    scheduler: Any = None,
    store: str | os.PathLike | None = None,
    block_size: int | None = None,
    failure_policy: str = "record",
    max_redraws: int = 10,
    redraw_on: Iterable[str] = ("error", "non-converged", "singular"),
    progress: bool | None = None,
    generator_id: str | None = None,
) -> pd.DataFrame:
    """Run a simulation study and return its long results table.

    Parameters
    ----------
    design
        A :class:`Design` (or what its constructor takes: a dict of factor levels, a list of dicts).
    generate
        ``generate(condition, rng) -> data``: one dataset for a condition from its own
        ``numpy.random.Generator``.  Must not touch global random state.
    analyse
        ``{method_name: fn}`` or a single ``fn``; each ``fn(condition, data, rng)`` (or
        ``fn(condition, data)``) returns a dict, a list of dicts or a DataFrame with ``parameter`` and any
        of ``estimate, se, ci_lower, ci_upper, pred_error, status, message`` (other keys are kept as extra
        columns).  Each method gets its own generator keyed by its name.  An exception becomes a row with
        status ``"error"`` and the exception as message; warnings raised are recorded and turn an
        ``"ok"`` row into ``"warning"``.
    reps
        Replications per condition (``rep`` runs 0 .. reps-1).
    seed
        Root seed.  Rows depend only on (seed, condition, rep, method name).
    backend, n_jobs, scheduler
        ``"serial"``; ``"loky"`` with ``n_jobs`` processes on this machine; ``"dask"``: ``scheduler`` is a
        Dask scheduler address (``"tcp://host:8786"``), a ``distributed.Client`` or a cluster; None starts a
        LocalCluster with ``n_jobs`` single-threaded worker processes.  loky and Dask need ``generate``
        and ``analyse`` picklable (top-level functions or ``functools.partial``).  A Dask worker lost
        mid-run (killed, pre-empted) costs nothing but time: its shards are recomputed on the others and
        give the same rows.  A params file names the cluster under ``simulation:`` (``scheduler`` or
        ``cluster``; :mod:`mlsimkit.simulate.cluster`).
    store
        Folder for the sharded Parquet results and manifest.  Rerunning with the same store resumes:
        complete shards are read, missing ones computed.  A store written for another design, seed,
        block size, method set or failure policy is refused.  None keeps results in memory only.
    block_size
        Replications per shard (default: the stored study's, else about reps / (4 n_jobs), at most 50).
    failure_policy, max_redraws, redraw_on
        ``"record"`` keeps every failure as a row.  ``"redraw"`` draws a new dataset (from a new stream,
        ``attempt`` + 1) when any method's status is in ``redraw_on``, up to ``max_redraws`` times, and
        records the number of redraws (``redraws``) and their reasons (``redraw_log``).
    progress
        Show a progress bar; None shows it only on an interactive terminal outside CI.
    generator_id
        Identity of the data generator (e.g. a hash of the fitted model file), stored in the manifest
        and checked on resume.

    Returns
    -------
    DataFrame with one row per (condition, rep, method, parameter): ``condition`` (key), the factor
    columns, ``rep, method, parameter, estimate, se, ci_lower, ci_upper, pred_error, status, message,
    warnings, fit_time, seed, redraws, redraw_log`` and any extra columns the methods returned; sorted by
    design order, rep, method order and row order.
    """
    if not isinstance(design, Design):
        design = Design(design)
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise SimulationError(f"reps must be a positive integer, got {reps!r}")
    reps = int(reps)
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise SimulationError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    seed = int(seed)
    if backend not in BACKENDS:
        raise SimulationError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if failure_policy not in POLICIES:
        raise SimulationError(f"failure_policy must be one of {list(POLICIES)}, got {failure_policy!r}")
    redraw_on = tuple(redraw_on)
    bad = [s for s in redraw_on if s not in STATUSES]
    if bad:
        raise SimulationError(f"redraw_on has unknown status(es) {bad}; choose from {list(STATUSES)}")
    if not isinstance(max_redraws, (int, np.integer)) or max_redraws < 0:
        raise SimulationError(f"max_redraws must be a non-negative integer, got {max_redraws!r}")
    if not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise SimulationError(f"n_jobs must be a positive integer, got {n_jobs!r}")
    if scheduler is not None and backend != "dask":
        raise SimulationError(f"scheduler is used by backend 'dask' only; got backend {backend!r}")
    if isinstance(scheduler, str):
        from .cluster import check_address

        problem = check_address(scheduler, inproc=True)
        if problem:
            raise SimulationError(f"scheduler: {problem}")
        scheduler = scheduler.strip()
    if not callable(generate):
        raise SimulationError(f"generate must be a callable generate(condition, rng), got {type(generate).__name__}")
    n_gen = _n_positional(generate, "generate")
    if n_gen not in (1, 2, 99):
        raise SimulationError(f"generate takes {n_gen} required positional arguments; expected (condition, rng)")
    methods = _methods(analyse)
    if backend != "serial":
        _check_picklable(generate, "generate", backend)
        for m in methods:
            _check_picklable(m.fn, f"method '{m.name}'", backend)

    root = Path(store) if store is not None else None
    old = _store.read_manifest(root) if root is not None else None
    if block_size is None:
        block_size = (old or {}).get("block_size") or max(1, min(50, math.ceil(reps / (4 * n_jobs))))
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise SimulationError(f"block_size must be a positive integer, got {block_size!r}")
    block_size = int(block_size)
    fingerprint = dict(
        design_hash=design.hash, seed=seed, block_size=block_size, methods=[m.name for m in methods],
        failure_policy=failure_policy, max_redraws=int(max_redraws) if failure_policy == "redraw" else 0,
        redraw_on=list(redraw_on) if failure_policy == "redraw" else [], generator_id=generator_id,
    )
    if root is not None:
        manifest = _store.new_manifest(
            **fingerprint, design=design.to_records(), factors=design.factors, reps=reps,
            generate=_describe(generate), analyse={m.name: _describe(m.fn) for m in methods},
        )
        if old is not None:
            _store.check_resumable(root, old, manifest)
            if old.get("versions") != manifest["versions"]:
                warnings.warn(
                    f"resuming store '{root}' written with {old.get('versions')} under {manifest['versions']}; "
                    "numbers from different library versions may differ", RuntimeWarning, stacklevel=2)
            manifest["created"] = old.get("created", manifest["created"])
            manifest["reps"] = max(reps, int(old.get("reps", 0)))
        root.mkdir(parents=True, exist_ok=True)
        lock = _lock(root)
        _clean_temporaries(root)
        _store.write_manifest(root, manifest)
    else:
        lock = None

    # the shards of this study, in canonical order
    shards: list[tuple[Condition, int, int]] = []
    for cond in design.conditions:
        for first in range(0, reps, block_size):
            shards.append((cond, first, min(first + block_size, reps) - 1))
    memory: dict[tuple[str, int], pd.DataFrame] = {}
    todo, done_reps = [], 0
    for cond, first, last in shards:
        if root is not None and _store.shard_path(root, cond.key, first, last).exists():
            done_reps += last - first + 1
        else:
            todo.append(_Task(cond, first, last, seed, generate, n_gen != 1, tuple(methods), failure_policy,
                              int(max_redraws), redraw_on))

    bar = _progress_bar(progress, len(design) * reps, done_reps)
    try:
        if todo:
            if backend == "serial":
                stream = _serial(todo)
            elif backend == "loky":
                stream = _loky(todo, int(n_jobs))
            else:
                stream = _dask(todo, int(n_jobs), scheduler)
            sizes = {(t.condition.key, t.first): t.last - t.first + 1 for t in todo}
            lasts = {(t.condition.key, t.first): t.last for t in todo}
            for key, first, frame in stream:
                if root is not None:
                    _store.write_shard(_store.shard_path(root, key, first, lasts[(key, first)]), frame)
                else:
                    memory[(key, first)] = frame
                bar.update(sizes[(key, first)])
    finally:
        bar.close()
        if lock is not None and lock.exists():
            lock.unlink()

    frames = []
    for cond, first, last in shards:
        if root is not None:
            frames.append(_store.read_shard(_store.shard_path(root, cond.key, first, last)))
        else:
            frames.append(memory[(cond.key, first)])
    return _combine(frames, design)


def _combine(frames: list[pd.DataFrame], design: Design) -> pd.DataFrame:
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    # Text columns as object with None for missing, whatever pandas infers (pandas 3 infers ``str`` for
    # some columns and not others, and Parquet round trips change it): one dtype for every path.
    for c in out.columns:
        if out[c].dtype == object or isinstance(out[c].dtype, pd.StringDtype):
            col = out[c].astype(object)
            out[c] = col.where(col.notna(), None)
    for f in design.factors:
        if f in out and out[f].dtype == object and out[f].notna().all():
            kinds = {type(v) for v in out[f].unique()}
            if kinds <= {int}:
                out[f] = out[f].astype(np.int64)
    return out


def load(store: str | os.PathLike) -> pd.DataFrame:
    """Read every shard of a results store (complete shards only) as one long table."""
    root = Path(store)
    manifest = _store.read_manifest(root)
    if manifest is None:
        raise _store.StoreError(f"'{root}' holds no {_store.MANIFEST}; it is not a results store (run the study first)")
    order = {c["key"]: i for i, c in enumerate(manifest["design"])}
    paths = sorted((root / "shards").glob("*/reps-*.parquet"),
                   key=lambda p: (order.get(p.parent.name, len(order)), p.name))
    reps = int(manifest.get("reps", 0))
    frames = []
    for p in paths:
        first, last = (int(x) for x in p.stem.split("-")[1:3])
        expected_last = min(first + manifest["block_size"], reps) - 1
        if last == expected_last and p.parent.name in order:
            frames.append(_store.read_shard(p))
    design = Design([c["values"] for c in manifest["design"]])
    return _combine(frames, design) if frames else pd.DataFrame()


def replay(condition: Condition | Mapping, rep: int, generate: Callable, seed: int = 2026, redraws: int = 0) -> Any:
    """Regenerate the dataset of replication ``rep`` of ``condition`` (e.g. to debug a failed fit)."""
    cond = condition if isinstance(condition, Condition) else Condition(condition)
    rng = data_rng(seed, cond.key, rep, redraws)
    return generate(cond, rng) if _n_positional(generate, "generate") != 1 else generate(cond)
