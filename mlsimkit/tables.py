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
    simulates = choice.get("simulates", True)
    text = (f"Stage 4 simulates with **{choice['best']}**" if simulates else
            f"The best generator by these scores is **{choice['best']}**")
    if best is not None:
        text += f" (mean of the headline scores {best:.3f}" + (f"; {', '.join(others)})" if others else ")")
    return text + ("." if simulates else "; this study has no Stage 4.")


def metric_matrix(summary: pd.DataFrame, domains, digits: int = 3, items=None):
    """Stage 3's summary (:meth:`mlsimkit.quality.QualityReport.summary`, one row per data set and item) as
    one row per metric and one column per data set, with the real-vs-real reference and its band first:
    the comparison a reader makes, in a table that fits the page. ▼ / ▲ mark a score below / above the band
    (a position, not a verdict: for a distance or a detection AUC below the band is the good side).
    ``items``: only these metrics, in this order (those the summary lacks are left out)."""
    rows = summary[summary["domain"].isin(list(domains))]
    if items is not None:
        order = {name: i for i, name in enumerate(items)}
        rows = rows[rows["item"].isin(order)].sort_values("item", key=lambda c: c.map(order), kind="stable")
    keys = ["domain", "level", "item"]
    order = list(dict.fromkeys(rows["dataset"]))
    ref = rows.drop_duplicates(keys).set_index(keys)
    fmt = f"{{:.{digits}f}}"
    out = pd.DataFrame(index=ref.index)
    out["real vs real"] = [fmt.format(r) + (f" ({fmt.format(lo)}–{fmt.format(hi)})" if pd.notna(lo) else "")
                           if pd.notna(r) else "" for r, lo, hi in zip(ref["reference"], ref["ref_lo"], ref["ref_hi"])]
    for name in order:
        sub = rows[rows["dataset"] == name].set_index(keys).reindex(out.index)
        mark = [" ▼" if v < lo else " ▲" if v > hi else "" for v, lo, hi in zip(sub["value"], sub["ref_lo"], sub["ref_hi"])]
        out[name] = ["" if pd.isna(v) else fmt.format(v) + m for v, m in zip(sub["value"], mark)]
    out = out.reset_index()
    return out.style.hide(axis="index")


def _number(v, digits: int) -> str:
    if pd.isna(v):
        return ""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def numbers(frame: pd.DataFrame, digits: int = 3):
    """A table of numbers as a reader wants it: ``digits`` decimals (whole numbers from 1,000 on), empty
    cells instead of NaN, index kept (it names the rows)."""
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    return frame.style.format({c: (lambda v, d=digits: _number(v, d)) for c in floats}, na_rep="")


def results_sentence(results: pd.DataFrame) -> str:
    """What the simulation's long results store holds, as one Markdown sentence."""
    keys = [k for k in ("source", "n_schools", "rep", "method", "parameter") if k in results.columns]
    names = {"source": "sources", "n_schools": "numbers of schools", "method": "methods", "parameter": "parameters"}
    counts = ", ".join(f"{results[k].nunique():,} {names[k]}" for k in keys if k != "rep")
    reps = results["rep"].nunique() if "rep" in results.columns else 0
    return (f"The results store holds **{len(results):,} rows**, one per {' × '.join(keys)} ({counts}; "
            f"{reps:,} replications per condition), each with its estimate or prediction error, status, message, "
            f"fit time and seed.")


def failure_messages(results: pd.DataFrame, n: int = 10):
    """The ``n`` most frequent (source, method, status, message) among fits whose status is not ``ok``, with
    their counts; a sentence-like one-row table when every fit was ``ok``."""
    bad = results.loc[results["status"] != "ok", ["source", "method", "status", "message"]].fillna("")
    if bad.empty:
        return pd.DataFrame({"fits": [f"all {len(results):,} fits ok"]}).style.hide(axis="index")
    counts = bad.value_counts().head(n).rename("fits").reset_index()
    return counts.style.hide(axis="index")


def value_mcse(frame: pd.DataFrame, digits: int = 3, value: str = "value", mcse: str = "mcse") -> list[str]:
    """``"value (MCSE)"`` cells, the form every measure takes in the book."""
    return [f"{v:.{digits}f} ({m:.{digits}f})" for v, m in zip(frame[value], frame[mcse])]
