"""A study: one params file (``params/<study>.yml``) with three profiles, and its artifact folder.

A params file looks like::

    study: hsb-prediction
    title: "Demonstration 1: predictive performance"
    dataset: hsb                    # a shipped data set, or
    # schema: path/to/schema.yml    # your own schema (files relative to it)
    objective: prediction
    stages: [1-specify, 2-train, 3-quality, 4-simulate, 5-evaluate, 6-robustness]
    common: {seed: 2026}            # parameters shared by every profile
    profiles:
      quick: {...}                  # CI smoke run
      default: {...}                # the main job
      paper: {...}                  # the paper's settings (500 replications)

Notebooks receive ``study``, ``profile`` and ``root`` from papermill and call :func:`load`. Stages hand
each other files under ``<root>/runs/<study>/<profile>/``; :meth:`Study.require` names the notebook to run
first when an input is missing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import MultilevelData, read_csv
from .errors import MissingArtifactError, ParamsError
from .schema import Schema

#: The profiles every shipped study defines; a params file may define any others (``mlsimkit run --profile NAME``).
PROFILES = ("quick", "default", "paper")
#: Every stage notebook (``notebooks/<stage>.ipynb``). ``6-positivity`` (weak overlap and targeted augmentation)
#: needs an objective with a positivity hook (the causal one), so it is not among the defaults.
STAGES = ("1-specify", "2-train", "3-quality", "4-simulate", "5-evaluate", "6-robustness", "6-positivity")
#: The stages of a params file without ``stages:``.
DEFAULT_STAGES = STAGES[:6]
_KEYS = {"study", "title", "dataset", "schema", "objective", "stages", "model", "common", "profiles", "description"}


@dataclass
class Study:
    """A study's settings under one profile, and where its artifacts live."""

    name: str
    profile: str
    root: Path
    spec: dict
    params: dict = field(default_factory=dict)
    file: Path | None = None

    @property
    def title(self) -> str:
        return self.spec.get("title", self.name)

    @property
    def objective(self) -> str:
        return self.spec.get("objective", "")

    @property
    def description(self) -> str:
        return str(self.spec.get("description", "")).strip()

    @property
    def stages(self) -> list[str]:
        return list(self.spec.get("stages", DEFAULT_STAGES))

    @property
    def run_dir(self) -> Path:
        """``<root>/runs/<study>/<profile>`` (created on first use)."""
        d = self.root / "runs" / self.name / self.profile
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path(self, *parts: str) -> Path:
        """A path inside the run folder; parent folders are created."""
        p = self.run_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def __getitem__(self, key: str) -> Any:
        if key not in self.params:
            raise ParamsError(
                f"file '{self.file}': parameter '{key}' is not set for profile '{self.profile}' "
                f"(set it under 'common' or 'profiles: {self.profile}')"
            )
        return self.params[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def schema(self) -> Schema:
        if "dataset" in self.spec:
            from . import datasets

            return datasets.schema(self.spec["dataset"])
        return Schema.from_yaml(self._schema_path())

    def data(self) -> MultilevelData:
        """The study's real data, loaded and validated."""
        if "dataset" in self.spec:
            from . import datasets

            return datasets.load(self.spec["dataset"])
        path = self._schema_path()
        return read_csv(Schema.from_yaml(path), path.parent)

    def _schema_path(self) -> Path:
        p = Path(self.spec["schema"])
        return p if p.is_absolute() else self.root / p

    def require(self, relpath: str, made_by: str) -> Path:
        """The path of an input artifact; if missing, one sentence naming the notebook to run first."""
        p = self.run_dir / relpath
        if not p.exists():
            raise MissingArtifactError(
                f"'{p}' is missing: run notebook '{made_by}' for study '{self.name}' with profile "
                f"'{self.profile}' first (mlsimkit run --study {self.name} --profile {self.profile})"
            )
        return p


def find_root(start: str | Path | None = None) -> Path:
    """The nearest folder (from ``start`` or the working directory upwards) holding ``params/`` and
    ``notebooks/``: the project root."""
    import os

    here = Path(start or os.getcwd()).resolve()
    for cand in (here, *here.parents):
        if (cand / "params").is_dir() and (cand / "notebooks").is_dir():
            return cand
    raise ParamsError(f"no project root (a folder with params/ and notebooks/) at or above '{here}'")


def params_file(study: str, root: str | Path = ".") -> Path:
    return Path(root) / "params" / f"{study}.yml"


def available(root: str | Path = ".") -> list[str]:
    """Names of the studies with a params file under ``<root>/params``."""
    return sorted(p.stem for p in (Path(root) / "params").glob("*.yml"))


def load(study: str, profile: str = "default", root: str | Path | None = None) -> Study:
    """Read ``<root>/params/<study>.yml`` and merge ``common`` with the chosen profile.

    ``root=None`` finds the project root from the working directory (so a notebook opened in
    ``notebooks/`` works as well as one executed by the runner).
    """
    root = Path(root).resolve() if root else find_root()
    path = params_file(study, root)
    if not path.is_file():
        raise ParamsError(
            f"file '{path}': params file of study '{study}' not found; studies here: {available(root)}"
        )
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"file '{path}': not valid YAML ({exc})") from None
    unknown = set(spec) - _KEYS
    if unknown:
        raise ParamsError(f"file '{path}': unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    if spec.get("study") != study:
        raise ParamsError(f"file '{path}': key 'study' must be {study!r} (the file name), got {spec.get('study')!r}")
    if ("dataset" in spec) == ("schema" in spec):
        raise ParamsError(f"file '{path}': give exactly one of 'dataset' (a shipped data set) or 'schema'")
    profiles = spec.get("profiles") or {}
    if profile not in profiles:
        raise ParamsError(f"file '{path}': profile '{profile}' is not defined under 'profiles' "
                          f"(defined: {list(profiles)})")
    bad = [s for s in spec.get("stages", DEFAULT_STAGES) if s not in STAGES]
    if bad:
        raise ParamsError(f"file '{path}': unknown stage(s) {bad}; stages are {list(STAGES)}")
    params = _merge(copy.deepcopy(spec.get("common") or {}), profiles[profile] or {})
    return Study(name=study, profile=profile, root=root, spec=spec, params=params, file=path)


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(base[k], v)
        else:
            base[k] = v
    return base
