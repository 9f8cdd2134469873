"""Execute the stage notebooks of each study with papermill and build the book with Jupyter Book.

``notebooks/<stage>.ipynb`` are templates; a study's params file says which stages it runs. Each
(study, stage) is executed into ``<out>/book/executed/<study>/<stage>.ipynb`` with the parameters
``study``, ``profile`` and ``root``; the injected-parameters cell is tagged ``remove-cell`` so the book
does not show it. The first failing notebook stops the run with an error naming it and the failing cell
(the partly executed copy is kept as ``<stage>.failed.ipynb`` for inspection, never under the book's
name). The book is built with ``jupyter-book build <out> -W`` (warnings are errors).

When ``out`` differs from the project root, the book's sources (``_config.yml``, ``_toc.yml``, ``book/``,
``params/``) are copied there first, so a whole run can go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from . import cost
from . import study as study_mod
from .errors import MlsimkitError

BOOK_SOURCES = ("_config.yml", "_toc.yml", "book", "params", "data")  # data/: the schemas and files of forks


class NotebookFailed(MlsimkitError):
    """A stage notebook raised an exception."""


class BookBuildFailed(MlsimkitError):
    """``jupyter-book build -W`` failed."""


def run(
    studies: Iterable[str] | str = "all",
    profile: str = "default",
    *,
    root: str | Path | None = None,
    out: str | Path | None = None,
    stages: Iterable[str] | None = None,
    build: bool = True,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Execute the notebooks of ``studies`` under ``profile`` and (optionally) build the book.

    Returns the path of the book's ``index.html`` when built, else ``None``. The book needs a page for every
    entry of ``_toc.yml``; when this run leaves some missing (say ``make book STUDY=hsb-prediction`` in a fresh
    clone, where no other study has run yet), it says so before the first notebook, runs the notebooks and skips
    the build (``-W`` would refuse it at the end of the work), naming the pages and how to build the whole book.
    """
    root = study_mod.find_root(root)
    out = Path(out).resolve() if out else root
    if out != root:
        _copy_sources(root, out)
    names = book_studies(out) if studies == "all" else [studies] if isinstance(studies, str) else list(studies)
    if not names:
        raise MlsimkitError(f"'{out / '_toc.yml'}' lists no executed study pages (book/executed/<study>/<stage>)")
    wanted = set(stages) if stages else None
    from .check import require
    from .toc import require as require_toc

    require_toc(out)  # the book's study parts follow the params files
    for name in names:  # every study's params, schema and data are checked before any notebook runs
        require(name, profile, out)
    unbuilt = _pages_left_missing(out, names, profile, stages) if build else []
    if unbuilt:
        build = False
        log(f"[mlsimkit] note: the book will not be built: {_unbuilt_reason(out, unbuilt)}")
    for name in names:
        st = study_mod.load(name, profile, out)
        for stage in st.stages:
            if wanted and stage not in wanted:
                continue
            t0 = time.perf_counter()
            cost.record(st.run_dir, stage, started=time.time())  # the last stage's page shows the cost table
            execute(root / "notebooks" / f"{stage}.ipynb",
                    out / "book" / "executed" / name / f"{stage}.ipynb",
                    {"study": name, "profile": profile, "root": str(out)}, cwd=out, log=log)
            cost.record(st.run_dir, stage, seconds=time.perf_counter() - t0)
    if unbuilt:
        log(f"[mlsimkit] executed notebooks: {out / 'book' / 'executed'}; the book was not built: "
            f"{_unbuilt_reason(out, unbuilt)}")
    if not build:
        return None
    return build_book(out, root=root, log=log)


def _pages_left_missing(out: Path, names, profile: str, stages) -> list[str]:
    """The pages of ``_toc.yml`` that are missing now and that running the stages ``stages`` (None: all) of the
    studies ``names`` will not produce."""
    produced = {f"book/executed/{name}/{stage}" for name in names
                for stage in study_mod.load(name, profile, out).stages if not stages or stage in stages}
    return [f for f in _missing_toc_files(out) if f not in produced]


def _rebuild_command(out: Path) -> str:
    """The command that builds the book from the notebooks already executed into ``out``."""
    return "mlsimkit build" if (out / "notebooks").is_dir() else f"mlsimkit build --out {out}"


def _unbuilt_reason(out: Path, pages: list[str]) -> str:
    studies = sorted({Path(p).parts[2] for p in pages if Path(p).parts[:2] == ("book", "executed")})
    what = f"pages of {', '.join(studies)} are not executed yet" if studies else \
        f"pages listed in _toc.yml are missing ({', '.join(pages)})"
    return (f"{what}, and the book needs every page of _toc.yml; run them too (`make book`, or `mlsimkit run "
            f"--study all`), or run the missing ones and then `{_rebuild_command(out)}`")


def book_studies(out: Path) -> list[str]:
    """The studies whose executed pages the book's ``_toc.yml`` lists, in order (what ``--study all`` runs)."""
    names: list[str] = []
    for f in _toc_files(out):
        parts = Path(f).parts
        if len(parts) >= 4 and parts[:2] == ("book", "executed") and parts[2] not in names:
            names.append(parts[2])
    return names


def _copy_sources(root: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for item in BOOK_SOURCES:
        src = root / item
        if src.is_dir():
            shutil.copytree(src, out / item, dirs_exist_ok=True, ignore=shutil.ignore_patterns("executed"))
        elif src.is_file():
            shutil.copy2(src, out / item)


def _kernel_manager_class(socket_dir: Path):
    """A Jupyter kernel manager that talks to the kernel over local IPC sockets instead of TCP: the kernel
    is on this machine anyway, and over TCP ipykernel warns at every start that traffic is unencrypted.

    The sockets live in ``socket_dir`` (an absolute path, so the kernel and the client agree whatever their
    working directories), never in the project: jupyter_client's default, ``kernel-ipc-<port>`` in the working
    directory, left files behind in the project root.
    """
    from jupyter_client.manager import KernelManager

    class IPCKernelManager(KernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(socket_dir / "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def execute(template: Path, target: Path, parameters: dict, *, cwd: Path, log=print) -> Path:
    """Execute one notebook template into ``target`` (atomically); raise :class:`NotebookFailed`."""
    import papermill as pm

    if not template.is_file():
        raise MlsimkitError(f"file '{template}': stage notebook not found")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.running.ipynb")
    failed = target.with_name(f"{target.stem}.failed.ipynb")
    label = f"{parameters.get('study')}/{target.stem}"
    t0 = time.perf_counter()
    log(f"[mlsimkit] running {label} ...")
    # a short absolute folder for the kernel's sockets (a Unix socket path must stay under ~100 characters)
    socket_dir = Path(tempfile.mkdtemp(prefix="mlsimkit-kernel-"))
    try:
        pm.execute_notebook(str(template), str(tmp), parameters=parameters, kernel_name="python3",
                            cwd=str(cwd), progress_bar=False, log_output=False,
                            kernel_manager_class=_kernel_manager_class(socket_dir))
    except pm.PapermillExecutionError as exc:
        os.replace(tmp, failed)
        if target.exists():
            target.unlink()  # never leave a stale success next to a failure
        src = _cell_source(failed, exc.cell_index, exc.exec_count)
        raise NotebookFailed(
            f"notebook '{template.name}' failed for study '{parameters.get('study')}' (profile "
            f"'{parameters.get('profile')}') in cell {exc.cell_index} (execution count {exc.exec_count}):\n"
            f"    {src}\n{exc.ename}: {exc.evalue}\n(partly executed copy: '{failed}')"
        ) from None
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
    _hide_parameter_cells(tmp)
    os.replace(tmp, target)
    if failed.exists():
        failed.unlink()
    log(f"[mlsimkit] done    {label} in {time.perf_counter() - t0:.1f} s")
    return target


def _cell_source(nb_path: Path, index: int, exec_count: int | None = None) -> str:
    """The source of the failing cell: the code cell with the failing execution count (papermill inserts
    error banners into the failed copy, which shifts the indices), else the cell at ``index``."""
    try:
        cells = json.loads(nb_path.read_text())["cells"]
        hits = [c for c in cells if c.get("cell_type") == "code" and exec_count is not None
                and c.get("execution_count") == exec_count]
        cell = hits[0] if hits else cells[index]
        lines = "".join(cell["source"]).strip().splitlines()
        return "\n    ".join(lines[:6]) + ("\n    ..." if len(lines) > 6 else "")
    except (OSError, ValueError, KeyError, IndexError):
        return "<source unavailable>"


def _hide_parameter_cells(path: Path) -> None:
    """Tag papermill's injected cell and the template's parameters cell ``remove-cell``."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if ("injected-parameters" in tags or "parameters" in tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    path.write_text(json.dumps(nb, indent=1))


def build_book(out: str | Path | None = None, *, root: str | Path | None = None, log=print) -> Path:
    """``jupyter-book build <out> -W``; returns the path of ``index.html``.

    Builds from the executed notebooks already under ``<out>/book/executed`` (``mlsimkit build``), so a build
    that failed can be repeated without re-running a single notebook. Files that ``_toc.yml`` does not list
    (caches such as ``.pytest_cache``, ``.ipynb_checkpoints``, a user's own notes) are not part of the book.
    """
    out = Path(out).resolve() if out else study_mod.find_root(root)
    rebuild = _rebuild_command(out)
    missing = _missing_toc_files(out)
    if missing:
        raise BookBuildFailed(
            "the table of contents lists pages that have not been produced yet: "
            + ", ".join(missing)
            + "; run every study first (mlsimkit run --study all)"
        )
    exe = Path(sys.executable).with_name("jupyter-book")
    # --all: a fresh build every time, so that -W sees every warning (an incremental build repeats none)
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(out), "--all", "-W", "-n", "--keep-going"]
    log(f"[mlsimkit] building the book: {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise BookBuildFailed(
            f"jupyter-book build failed (exit {proc.returncode}):\n{tail}\n"
            f"The executed notebooks are kept under '{out / 'book' / 'executed'}'; after fixing the cause, "
            f"rebuild the book without re-running them: {rebuild}"
        )
    index = out / "_build" / "html" / "index.html"
    log(f"[mlsimkit] book ready: {index}")
    return index


def _toc_files(out: Path) -> list[str]:
    import yaml

    toc = yaml.safe_load((out / "_toc.yml").read_text())
    files: list[str] = [toc.get("root", "")]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc.get("parts", toc.get("chapters", [])))
    return [f for f in files if f]


def _missing_toc_files(out: Path) -> list[str]:
    exts = (".md", ".ipynb", ".rst")
    return [f for f in _toc_files(out) if not any((out / f"{f}{e}").exists() or (out / f).exists() for e in exts)]
