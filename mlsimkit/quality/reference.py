"""The real-vs-real reference band, the bootstrap over schools, and a deliberately broken data set.

Reference band: the real schools are split at random into two halves (by school, repeated
``reference_splits`` times) and every metric is computed with one half as "real" and the other as
"synthetic". That is what a generator that draws fresh schools from the same population would score.
Each half has half the schools, so sampling noise is larger than between the full real data and a
synthetic set of the same size, and a good generator may land a little above the band on a noisy
fidelity metric. **Above the band is not better.** A generator that copies real schools scores above
it on every fidelity metric; the privacy and seed-001 metrics exist to catch that, and they put a copy
*below* the band (authenticity, detection score, SDIS, DCR share closer to hold-out). Read a score
above the band together with those.

Hold-out: the metrics that need real schools a generator never saw (DCR share closer to hold-out,
TSTR AUROC (OOD), SDIS) are computed for generators trained without a hold-out of the real schools
(:func:`holdout_split`). In each reference split the "real" half is cut the same way (a training part
and a hold-out part with as many schools as the real hold-out, at most half of the half), so the band
answers the same question.

Bootstrap: schools of the real and of the synthetic data are resampled with replacement (independently);
with k synthetic data sets, draw b uses data set ``b mod k``, so the percentile interval carries both
sampling and generator variation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import MultilevelData
from ..errors import MlsimkitError
from ._common import resample_schools, split_halves  # noqa: F401  (re-exported)


def shuffled_schools(data: MultilevelData, seed: int = 0) -> MultilevelData:
    """Students reassigned to schools at random (school sizes and every marginal kept, clustering destroyed).

    A deliberately broken "synthetic" data set: within-table marginals of both tables are exactly the real
    ones, while ICCs, reliabilities and cross-level relations should collapse. Ids are renamed so that the
    data count as a new data set.
    """
    rng = np.random.default_rng(seed)
    schema = data.schema
    child = schema.bottom
    t = schema.tables[child]
    df = data[child].copy()
    df[t.foreign_key] = df[t.foreign_key].to_numpy()[rng.permutation(len(df))]
    tables = dict(data.tables)
    tables[child] = df
    from ._common import take_units

    shuffled = MultilevelData(schema, tables, validate=False)
    top = schema.tables[schema.top].primary_key[0]
    return take_units(shuffled, shuffled[schema.top][top].to_numpy(), relabel=True)


def interval(values, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (np.nan, np.nan)
    a = (1 - level) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def band(frame: pd.DataFrame, keys: list[str], level: float = 0.95) -> pd.DataFrame:
    """Mean and percentile band of ``value`` within groups of ``keys``."""
    g = frame.groupby(keys, sort=False, dropna=False)["value"]
    out = g.mean().rename("reference").to_frame()
    qs = g.apply(lambda v: pd.Series(interval(v, level), index=["ref_lo", "ref_hi"])).unstack()
    return out.join(qs).reset_index()


def holdout_split(data: MultilevelData, share: float, rng: np.random.Generator) -> tuple[MultilevelData, MultilevelData]:
    """(training part, hold-out part): a random ``share`` of the top-level units held out (at least one unit,
    and at least one left for training)."""
    top = data.schema.top
    pk = data.schema.tables[top].primary_key[0]
    ids = data[top][pk].to_numpy()
    if not 0 < share < 1 or len(ids) < 2:
        raise MlsimkitError(f"hold-out share must lie in (0, 1) and the data need at least 2 {top} rows; "
                         f"got share={share!r} and {len(ids)} rows")
    n_hold = int(min(max(round(share * len(ids)), 1), len(ids) - 1))
    perm = rng.permutation(len(ids))
    return data.subset(ids[np.sort(perm[n_hold:])]), data.subset(ids[np.sort(perm[:n_hold])])
