"""The Stage 5 figures draw from real summaries and name what is missing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from mlsimkit.performance import PerformanceError, summarise
from mlsimkit.plots_performance import estimates_plot, nested_loop_plot, zipper_plot
from mlsimkit.simulate import Design, run
from mlsimkit.simulate import examples as ex


@pytest.fixture(scope="module")
def study():
    design = Design({"n_clusters": [10, 30], "icc": [0.0, 0.2, 0.4]})
    res = run(design, ex.clustered_sample, {"naive": ex.naive_mean, "cluster": ex.cluster_mean}, reps=60, seed=1)
    return design, res, summarise(res, truth=0.0)


def test_nested_loop_plot(study, tmp_path):
    _, _, s = study
    fig = nested_loop_plot(s, "coverage")
    assert isinstance(fig, plt.Figure)
    ax = fig.axes[0]
    assert len(ax.get_legend().get_texts()) == 2 and "n_clusters > icc" in ax.get_xlabel()
    fig.savefig(tmp_path / "nlp.png")
    with pytest.raises(PerformanceError, match="no measure 'bogus'"):
        nested_loop_plot(s, "bogus")
    plt.close("all")


def test_estimates_plot(study):
    _, _, s = study
    fig = estimates_plot(s, "bias", width=1.96)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "n_clusters=10, icc=0.0"
    assert "1.96 MCSE" in ax.get_xlabel()
    plt.close("all")


def test_zipper_plot(study):
    design, res, _ = study
    key = design[5].key
    fig = zipper_plot(res, truth=0.0, condition=key)
    assert len(fig.axes) == 2 and fig.axes[0].get_title().startswith("naive: coverage")
    with pytest.raises(PerformanceError, match="choose one with condition="):
        zipper_plot(res, truth=0.0)
    plt.close("all")
