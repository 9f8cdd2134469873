"""A known multilevel data-generating process with a school-level treatment, for tests and benchmarks.

Schools j have covariates ``Z1 ~ N(0, 1)``, ``Z2 ~ U(-sqrt 3, sqrt 3)`` (variance 1, so that the
nonlinear term is bounded and overlap is good) and ``Z2sq = Z2^2``; students have ``X = 0.5 Z1 + v_j + d_ij``
(``v_j ~ N(0, 0.5)``, ``d_ij ~ N(0, 1)``). The school is treated with probability

    logit g = -0.3 + 0.6 Z1 + 0.8 (Z2sq - 1) + 0.3 Xbar_j      (Xbar_j: the school mean of X)

and the outcome is

    Y = 1 + ate A + X + 1.5 Z1 + Z2 + 1.5 (Z2sq - 1) + u_j + e_ij,   u_j ~ N(0, tau2), e_ij ~ N(0, sigma2).

The effect is constant, so the ATE and the ATT are ``ate``. ``Z2sq`` confounds: leaving it out of the outcome
model misspecifies OR, leaving it out of the propensity misspecifies IPW (the double-robustness designs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = {"treatment": "A", "outcome": "Y", "cluster": "school", "student": ("X",), "school": ("Z1", "Z2", "Z2sq")}


def simulate(n_schools: int, students: int, rng, *, ate: float = 2.0, tau2: float = 1.0, sigma2: float = 4.0,
             overlap: float = 1.0) -> pd.DataFrame:
    """One data set (join-as-one frame): ``n_schools`` schools of ``students / 2 .. 3 students / 2`` students.
    ``overlap`` scales the propensity's slopes (larger: weaker overlap)."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    J = n_schools
    sizes = rng.integers(max(1, students // 2), students * 3 // 2 + 1, J)
    codes = np.repeat(np.arange(J), sizes)
    z1, z2 = rng.normal(size=J), rng.uniform(-np.sqrt(3), np.sqrt(3), J)
    v = rng.normal(0, np.sqrt(0.5), J)
    x = 0.5 * z1[codes] + v[codes] + rng.normal(size=codes.size)
    xbar = np.bincount(codes, weights=x) / sizes
    eta = 0.6 * z1 + 0.8 * (z2**2 - 1) + 0.3 * xbar
    g = 1 / (1 + np.exp(-(-0.3 + overlap * eta)))
    a = (rng.random(J) < g).astype(float)
    u = rng.normal(0, np.sqrt(tau2), J)
    y = (1 + ate * a[codes] + x + 1.5 * z1[codes] + z2[codes] + 1.5 * (z2[codes] ** 2 - 1) + u[codes]
         + rng.normal(0, np.sqrt(sigma2), codes.size))
    return pd.DataFrame({"school": codes.astype(str), "A": a[codes], "Y": y, "X": x, "Z1": z1[codes],
                         "Z2": z2[codes], "Z2sq": z2[codes] ** 2})
