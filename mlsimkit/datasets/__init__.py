"""The real multilevel data sets shipped inside the package (no download at run time).

========  ======================================================  ==========================
name      content                                                 levels
========  ======================================================  ==========================
hsb       High School and Beyond 1982 (Raudenbush & Bryk)          schools > students
exam      Inner London exam scores (Goldstein et al. 1993)         schools > students
chem97    A-level Chemistry, England 1997                          LEAs > schools > students
star      Tennessee STAR class-size experiment                     schools > classes > records
========  ======================================================  ==========================

Provenance and the changes made when shipping are in ``PROVENANCE.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

from ..data import MultilevelData, read_csv
from ..errors import MlsimkitError
from ..schema import Schema

HERE = Path(__file__).parent
NAMES = ("hsb", "exam", "chem97", "star")


def path(name: str) -> Path:
    """Folder holding a shipped data set and its ``schema.yml``."""
    if name not in NAMES:
        raise MlsimkitError(f"dataset {name!r} is not shipped; expected one of {list(NAMES)}")
    return HERE / name


def schema(name: str) -> Schema:
    """The Stage 1 schema of a shipped data set."""
    return Schema.from_yaml(path(name) / "schema.yml")


def load(name: str) -> MultilevelData:
    """Load and validate a shipped data set, e.g. ``load("hsb")`` (160 schools, 7,185 students)."""
    return read_csv(schema(name), path(name))


def provenance() -> str:
    """The provenance notes of the shipped data (markdown)."""
    return (HERE / "PROVENANCE.md").read_text()
