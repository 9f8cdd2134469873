"""The results store: sharded Parquet plus a JSON manifest, written atomically, resumable.

Layout::

    <store>/manifest.json
    <store>/shards/<condition key>/reps-<first>-<last>.parquet

A shard holds every row of one condition for one block of replications ``[first, last]``.  It is
written to a temporary file in the same folder and renamed, so a shard either exists whole or not at
all: a study killed at any point loses at most the shards being computed, and rerunning it computes
only the missing ones.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import MlsimkitError
from ..io import atomic_path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Fields of the manifest that must match for a store to be resumed.
FINGERPRINT = ("design_hash", "seed", "block_size", "methods", "failure_policy", "max_redraws", "redraw_on",
               "generator_id")


class StoreError(MlsimkitError):
    """The results store cannot be used for this study (changed design, foreign or corrupt files)."""


def git_commit() -> str | None:
    """The commit of the git checkout holding the package, or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict:
    import numpy
    import pyarrow

    from .. import __version__

    return {"python": platform.python_version(), "numpy": numpy.__version__, "pandas": pd.__version__,
            "pyarrow": pyarrow.__version__, "mlsimkit": __version__}


def shard_path(root: Path, key: str, first: int, last: int) -> Path:
    return Path(root) / "shards" / key / f"reps-{first:06d}-{last:06d}.parquet"


def read_manifest(root: str | Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"file '{path}' is not valid JSON ({err}); delete the store folder to start over") from None


def write_manifest(root: str | Path, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return path


def check_resumable(root: str | Path, old: dict, new: dict) -> None:
    """Raise a StoreError naming every fingerprint field that differs between ``old`` and ``new``."""
    if old.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"store '{root}' was written with results format {old.get('format_version')!r}, this package writes "
            f"{FORMAT_VERSION}; use a new store folder"
        )
    diffs = []
    for field in FINGERPRINT:
        a, b = old.get(field), new.get(field)
        if field == "generator_id" and (a is None or b is None):
            continue
        if a != b:
            if field == "design_hash":
                old_keys = {c["key"]: c["values"] for c in old.get("design", [])}
                new_keys = {c["key"]: c["values"] for c in new.get("design", [])}
                added = [new_keys[k] for k in new_keys if k not in old_keys]
                removed = [old_keys[k] for k in old_keys if k not in new_keys]
                diffs.append(f"the design changed (hash {a} -> {b}; conditions added: {added or 'none'}; "
                             f"removed: {removed or 'none'})")
            else:
                diffs.append(f"{field} changed ({a!r} -> {b!r})")
    if diffs:
        raise StoreError(
            f"refusing to resume the study stored in '{root}': " + "; ".join(diffs)
            + ". Its results would mix two different studies. Give a new store folder, or delete this one "
            "to start over."
        )


def new_manifest(**fields: Any) -> dict:
    return {"format_version": FORMAT_VERSION, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "versions": versions(), "git_commit": git_commit(), **fields}


def write_shard(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_shard(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - report which file is broken
        raise StoreError(f"results shard '{path}' cannot be read ({err}); delete it and rerun to recompute it") from None
