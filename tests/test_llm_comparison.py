"""The second paper's findings as rules on a Stage 3 summary: each verdict must be able to go either way."""

import numpy as np
import pandas as pd
import pytest

from mlsimkit.quality import llm_comparison as lc


class CTGANGenerator:  # the rules read the trained models' class names only
    pass


class TabularTransformerGenerator:
    pass


class ClavaDDPMGenerator:
    pass


GENS = {"gan": CTGANGenerator(), "llm": TabularTransformerGenerator(), "diff": ClavaDDPMGenerator()}
BANDS = {"quality (seed-001)": (0.6, 0.58, 0.64), "detection score": (0.9, 0.8, 0.95), "SDIS": (2.2, 2.15, 2.25),
         "Wasserstein distance": (0.03, 0.02, 0.05), "Jensen-Shannon distance": (0.1, 0.08, 0.12),
         "TSTR AUROC (OOD)": (0.75, 0.73, 0.77)}


def summary(values: dict, sd: float = 0.01) -> pd.DataFrame:
    rows = []
    for item, per in values.items():
        ref, lo, hi = BANDS[item]
        for name, v in per.items():
            rows.append(dict(dataset=name, domain="seed-001", level="joined", item=item, value=v, sd=sd,
                             reference=ref, ref_lo=lo, ref_hi=hi))
    return pd.DataFrame(rows)


def frame(quality, detection, sdis, wd, jsd, tstr, sd=0.01):
    keys = list(GENS)
    return summary({item: dict(zip(keys, vals)) for item, vals in (
        ("quality (seed-001)", quality), ("detection score", detection), ("SDIS", sdis),
        ("Wasserstein distance", wd), ("Jensen-Shannon distance", jsd), ("TSTR AUROC (OOD)", tstr))}, sd)


def verdicts(table):
    return list(table["verdict"].str.split(":").str[0])


def test_every_finding_holds_when_the_numbers_say_so():
    f = frame([0.7, 0.6, 0.6], [0.7, 0.9, 0.6], [2.2, 2.21, 2.19], [0.02] * 3, [0.09] * 3, [0.76] * 3)
    t = lc.claims(f, GENS, n_synthetic=10)
    assert verdicts(t) == ["holds"] * 6
    assert lc.sentence(t) == ("Of the second paper's 6 findings, 6 apply to this study's generators: 6 hold, "
                              "0 do not, 0 are inconclusive.")


def test_every_finding_fails_on_numbers_against_it():
    f = frame([0.5, 0.6, 0.7], [0.9, 0.6, 0.95], [1.5, 2.2, 1.9], [0.02, 0.09, 0.02], [0.2, 0.09, 0.09],
              [0.76, 0.5, 0.76])
    t = lc.claims(f, GENS, n_synthetic=10)
    assert verdicts(t) == ["does not hold"] * 6
    assert t["verdict"].iloc[3] == "does not hold: llm" and t["verdict"].iloc[5] == "does not hold: llm"


def test_a_lead_within_two_standard_errors_is_inconclusive():
    f = frame([0.62, 0.6, 0.61], [0.7, 0.71, 0.6], [2.2] * 3, [0.02] * 3, [0.09] * 3, [0.76] * 3, sd=0.05)
    assert verdicts(lc.claims(f, GENS, n_synthetic=10))[:2] == ["inconclusive", "inconclusive"]
    # one candidate data set per generator: no standard error, no verdict on "highest"
    f = frame([0.9, 0.6, 0.6], [0.7, 0.99, 0.6], [2.2] * 3, [0.02] * 3, [0.09] * 3, [0.76] * 3, sd=np.nan)
    assert verdicts(lc.claims(f, GENS, n_synthetic=1))[:2] == ["inconclusive", "inconclusive"]


def test_a_study_without_an_llm_style_generator_says_so():
    gens = {k: v for k, v in GENS.items() if k != "llm"}
    f = frame([0.7, 0.6, 0.6], [0.7, 0.9, 0.6], [2.2] * 3, [0.02] * 3, [0.09] * 3, [0.76] * 3)
    t = lc.claims(f[f["dataset"] != "llm"], gens, n_synthetic=10)
    assert t["verdict"].iloc[1] == "not applicable" and "no TabularTransformerGenerator" in t["measured here"].iloc[1]
    assert "5 apply" in lc.sentence(t)
    with pytest.raises(ValueError, match="no generators"):
        lc.claims(f, {}, n_synthetic=10)
