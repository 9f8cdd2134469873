"""Objectives as plug-ins: what a study evaluates, looked up by the name in ``objective:``.

An objective is one module of this package, ``mlsimkit/objectives/<name>.py``; the value of ``objective:``
in a params file is that module's name. The workflow finds it with :func:`get` and never branches on the
name, so adding an objective (say a causal one) is adding a module: no other module and no notebook
changes. The shape follows SimDesign's documented stubs (Generate / Analyse / Summarise, with ``prepare``
run once): a module supplies

=======================================  =====================================================================
``check_model(model, schema)``           problems of the params ``model:`` mapping against the study's schema,
                                         a list of ``(key path, what was expected)``; ``[]`` when fine
``check_traditional(settings)``          problems of the params ``traditional:`` mapping (same form)
``SOURCES``                              source names it provides besides trained generators (the
                                         traditional designs), for ``simulation.sources``
``spec(study)``                          the analysis model built from ``model:``
``prepare(study, data)``                 fixed objects computed once per stage (e.g. the fitted true model)
``source(study, data, name, path, fixed)``  ``(generate, methods, truth)`` of one data source
``MEASURES``                             the measures of Stage 5 (:mod:`mlsimkit.performance`)
``ABLATION_MEASURES``                    the measures of the ablation table (Stage 6)
``tables(study, summary)``               Stage 5's result tables, ``{title: DataFrame}``
``figures(study, summary)``              Stage 5's figures, ``{title: Figure}``
``findings(study, summary)``             plain-language statements computed from the numbers (markdown)
``level_of_parameters(study)``           ``{parameter: "student" | "school"}`` of the reported parameters
=======================================  =====================================================================

Optional: ``check_sources(sources, model, schema)``, problems of what some sources need of the model (the
recovery objective's ``traditional-adjusted`` needs numerical columns); the positivity hooks of stage
``6-positivity`` (``check_positivity``, ``positivity_settings``, ``positivity_pool``, ``positivity_source``,
``positivity_summary``, ``positivity_diagnostics``, ``positivity_tables``, ``positivity_figure``,
``positivity_findings``; the causal objective's), without which ``mlsimkit check`` refuses the stage. Modules
whose name starts with ``_`` are helpers, not objectives.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..errors import ParamsError

#: What every objective module must define.
REQUIRED = ("check_model", "check_traditional", "SOURCES", "spec", "prepare", "source", "MEASURES",
            "ABLATION_MEASURES", "tables", "figures", "findings", "level_of_parameters")


def names() -> list[str]:
    """The objectives available: the public modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    """The objective module called ``name`` (checked to supply everything in :data:`REQUIRED`)."""
    if name not in names():
        raise ParamsError(f"parameter 'objective': {name!r} is not an objective; expected one of {names()}")
    mod = importlib.import_module(f"{__name__}.{name}")
    missing = [a for a in REQUIRED if not hasattr(mod, a)]
    if missing:
        raise ParamsError(f"objective module '{mod.__name__}' lacks {missing} (see mlsimkit.objectives)")
    return mod
