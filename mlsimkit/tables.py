"""What the notebooks show a reader instead of Python reprs: settings, timings and files as small tables,
choices as sentences.

A dictionary printed by a notebook (``{'n_synthetic': 3, ...}``) is code talking to a programmer; the book
talks to a reader. These helpers turn the bookkeeping of a stage into a small table (a pandas ``Styler`` with
the index hidden; its ``.data`` is the DataFrame) or one sentence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd


def _flatten(mapping: Mapping, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _cell(value):
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return "(none)" if not value else ", ".join(f"{k}: {v}" for k, v in value.items())
    if value is None:
        return "(none)"
    return value


def settings_table(mapping: Mapping, columns: tuple[str, str] = ("setting", "value")):
    """A nested mapping as a two-column table, nested keys joined with dots (``ctgan.epochs``), lists as
    comma-separated text."""
    flat = _flatten(mapping)
    values = [_cell(v) for v in flat.values()]
    if any(isinstance(v, str) for v in values):  # one column of one kind: numbers as text beside text
        values = [v if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    frame = pd.DataFrame({columns[0]: list(flat), columns[1]: values})
    return frame.style.hide(axis="index")


def timings_table(timings: Mapping[str, float], digits: int = 1):
    """Seconds per step, rounded, with the total as the last row."""
    frame = pd.DataFrame({"step": list(timings), "seconds": [round(float(v), digits) for v in timings.values()]})
    total = pd.DataFrame({"step": ["total"], "seconds": [round(float(sum(timings.values())), digits)]})
    return pd.concat([frame, total], ignore_index=True).style.hide(axis="index").format({"seconds": f"{{:.{digits}f}}"})


def files_table(paths: Iterable[Path], root: Path):
    """Files written by a stage, relative to ``root``, with their sizes in kB."""
    rows = [(str(Path(p).relative_to(root)), round(Path(p).stat().st_size / 1000, 1)) for p in sorted(paths)]
    return pd.DataFrame(rows, columns=["file", "kB"]).style.hide(axis="index").format({"kB": "{:.1f}"})


def choice_sentence(choice: Mapping) -> str:
    """Stage 3's choice of generator (:func:`mlsimkit.workflow.choose_generator`) as one Markdown sentence."""
    scores = choice.get("mean_scores", {})
    others = [f"{name} {score:.3f}" for name, score in scores.items() if name != choice["best"]]
    best = scores.get(choice["best"])
    text = f"Stage 4 simulates with **{choice['best']}**"
    if best is None:
        return text + "."
    return text + f" (mean of the headline scores {best:.3f}" + (f"; {', '.join(others)})." if others else ").")
