"""The book's table of contents follows the studies: a study's part of ``_toc.yml`` comes from its params file.

A study's part is generated (return2edu-paper writes its ``_toc.yml`` from its configs in the same way)::

    - caption: "<title> (<study>)"
      chapters:
        - file: book/<study>                   # the study's introduction page
          sections:
            - file: book/executed/<study>/<stage>   # one per stage of ``stages:``

:func:`study_part` builds it, :func:`add_study` appends it to ``_toc.yml`` (before the ``Reference`` part)
or replaces the study's existing part, and :func:`problems` checks every study part of ``_toc.yml`` against
the params files: a study without a params file, stage pages that differ from its ``stages:``, and a
missing introduction page are each named. ``mlsimkit run`` refuses to start while there is a problem.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import MlsimkitError
from .io import write_text

REFERENCE_CAPTION = "Reference"


def _load(root: Path) -> dict:
    return yaml.safe_load((Path(root) / "_toc.yml").read_text()) or {}


def _executed_study(part: dict) -> str | None:
    """The study whose executed pages a part lists (None for prose parts)."""
    for ch in part.get("chapters", []) or []:
        for node in [ch, *(ch.get("sections", []) or [])]:
            p = Path(str(node.get("file", ""))).parts
            if len(p) >= 4 and p[:2] == ("book", "executed"):
                return p[2]
    return None


def _stage_pages(part: dict, study: str) -> list[str]:
    out = []
    for ch in part.get("chapters", []) or []:
        for node in [ch, *(ch.get("sections", []) or [])]:
            p = Path(str(node.get("file", ""))).parts
            if len(p) >= 4 and p[:3] == ("book", "executed", study):
                out.append(p[3])
    return out


def study_part(study: str, root: str | Path) -> dict:
    """The ``_toc.yml`` part of ``study``, from its params file (title and stages)."""
    from . import study as study_mod

    spec = yaml.safe_load(study_mod.params_file(study, root).read_text()) or {}
    stages = spec.get("stages", list(study_mod.DEFAULT_STAGES))
    title = spec.get("title", study)
    return {"caption": f"{title} ({study})",
            "chapters": [{"file": f"book/{study}",
                          "sections": [{"file": f"book/executed/{study}/{s}"} for s in stages]}]}


def add_study(study: str, root: str | Path) -> Path:
    """Put ``study``'s generated part into ``<root>/_toc.yml`` (replacing its old part, or before the
    ``Reference`` part); returns the file."""
    root = Path(root)
    toc = _load(root)
    parts = toc.setdefault("parts", [])
    new = study_part(study, root)
    for i, part in enumerate(parts):
        if _executed_study(part) == study:
            parts[i] = new
            break
    else:
        at = next((i for i, p in enumerate(parts) if p.get("caption") == REFERENCE_CAPTION), len(parts))
        parts.insert(at, new)
    text = (root / "_toc.yml").read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    path = root / "_toc.yml"
    write_text(path, header + yaml.safe_dump(toc, sort_keys=False, allow_unicode=True, width=110))
    return path


def problems(root: str | Path) -> list[str]:
    """Every disagreement of ``_toc.yml``'s study parts with the params files (``[]`` when none)."""
    from . import study as study_mod

    root = Path(root)
    out = []
    for part in _load(root).get("parts", []) or []:
        study = _executed_study(part)
        if study is None:
            continue
        pfile = study_mod.params_file(study, root)
        if not pfile.is_file():
            out.append(f"_toc.yml lists pages of study '{study}', which has no params file '{pfile}'")
            continue
        spec = yaml.safe_load(pfile.read_text()) or {}
        want = list(spec.get("stages", study_mod.DEFAULT_STAGES))
        have = _stage_pages(part, study)
        if have != want:
            out.append(f"_toc.yml lists the stages {have} of study '{study}', its params file says {want}; "
                       f"regenerate its part: mlsimkit toc --study {study}")
        for ch in part.get("chapters", []) or []:
            f = str(ch.get("file", ""))
            if not f.startswith("book/executed/") and not any((root / f).with_suffix(s).is_file() for s in (".md", ".ipynb")):
                out.append(f"_toc.yml: the page '{f}' of study '{study}' is missing (expected '{f}.md')")
    return out


def require(root: str | Path) -> None:
    """Raise one :class:`MlsimkitError` naming every problem of :func:`problems`."""
    found = problems(root)
    if found:
        raise MlsimkitError("the table of contents does not follow the studies:\n" + "\n".join(f"  - {p}" for p in found))
