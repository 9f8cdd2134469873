"""Metrics whose definitions coincide with SDMetrics agree with values SDMetrics computed once
(tests/fixtures/make_sdmetrics_fixture.py; SDMetrics is not needed to run this test)."""

import json
from pathlib import Path

import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit.quality import within

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "sdmetrics_reference.json").read_text())


@pytest.fixture(scope="module")
def frames():
    j = ds.load("hsb").join_as_one()
    real = j[j.School.isin(FIXTURE["real_schools"])].reset_index(drop=True)
    syn = j[j.School.isin(FIXTURE["syn_schools"])].reset_index(drop=True)
    return real, syn


KINDS = {"SES": "numerical", "MathAch": "numerical", "MEANSES": "numerical", "DISCLIM": "numerical",
         "Minority": "binary", "Sex": "binary", "Sector": "binary"}


@pytest.mark.parametrize("metric,cols,expected", FIXTURE["values"], ids=lambda v: str(v))
def test_agrees_with_sdmetrics(frames, metric, cols, expected):
    real, syn = frames
    if metric == "KSComplement":
        got = within.ks_complement(real[cols[0]], syn[cols[0]])
    elif metric == "TVComplement":
        got = within.tv_complement(real[cols[0]], syn[cols[0]])
    elif metric == "CorrelationSimilarity":
        a, b = cols
        got = within.correlation_similarity(real[a], real[b], syn[a], syn[b])
    else:
        got = within.contingency_similarity(real, syn, cols[0], cols[1], KINDS)
    assert got == pytest.approx(expected, abs=1e-9)
