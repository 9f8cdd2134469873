"""Numerical core: profiled REML/ML deviance of a one-factor linear mixed model from per-group
sufficient statistics, its analytic gradient, and the optimiser.

Model (Bates, Mächler, Bolker & Walker 2015, "Fitting linear mixed-effects models using lme4",
J. Stat. Softw. 67(1), sections 3.1-3.4)::

    y = X beta + Z b + e,   b_j ~ N(0, sigma^2 Lambda Lambda'),  e ~ N(0, sigma^2 I)

with one grouping factor (m groups, q random effects per group) and Lambda a q x q lower
triangular *relative* Cholesky factor whose lower triangle, read column by column, is ``theta``
(lme4's order).  Because the random-effects model matrix is block diagonal, every quantity of the
penalised least squares problem of section 3 of the paper reduces to per-group q x q and q x p
blocks:

    M_j   = Lambda' Z_j'Z_j Lambda + I = L_j L_j'           (the blocks of L_theta)
    R_ZXj = L_j^{-1} Lambda' Z_j'X_j,   c_uj = L_j^{-1} Lambda' Z_j'y_j
    R_X'R_X = X'X - sum_j R_ZXj' R_ZXj                      (A below)
    beta    = A^{-1} (X'y - sum_j R_ZXj' c_uj)
    r^2     = y'y - sum_j |c_uj|^2 - |c_beta|^2            (penalised RSS at the optimum)

    ML deviance   = log|L|^2 + n (1 + log(2 pi r^2 / n))                      (paper eq. 34)
    REML criterion= log|L|^2 + log|R_X|^2 + (n-p)(1 + log(2 pi r^2/(n-p)))   (paper eq. 41)

Only the sufficient statistics X'X, X'y, y'y and per group Z_j'Z_j, Z_j'X_j, Z_j'y_j are kept, so
one evaluation costs O(m q^3 + m q p + p^3) whatever n is.

The gradient with respect to Lambda is analytic (derived here, checked against finite differences
in the tests): with S_j = Z_j'Z_j, P_j = M_j^{-1} Lambda', K_j = I - S_j Lambda P_j,
W_j = Lambda M_j^{-1} Lambda' and B_j = Z_j'X_j A^{-1} X_j'Z_j,

    d log|M|   / d Lambda = sum_j 2 S_j Lambda M_j^{-1}
    d log|A|   / d Lambda = -2 sum_j K_j B_j P_j'             (A = X'X - sum Z_j'X_j' W_j Z_j'X_j)
    d r^2      / d Lambda = -2 sum_j (Z_j' r_j) u_j'          (envelope theorem; b_j = Lambda u_j)

where Z_j' r_j = Z_j'y_j - Z_j'X_j beta - S_j b_j comes from the sufficient statistics too.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy.linalg import cho_solve, solve_triangular

LOG2PI = math.log(2.0 * math.pi)


class NotPositiveDefinite(ArithmeticError):
    """R_X'R_X lost positive definiteness (collinear fixed effects at this theta)."""


# --------------------------------------------------------------------------------------------
# sufficient statistics
# --------------------------------------------------------------------------------------------
def group_sums(y, X, Z, starts):
    """Per-group sums [vec Z_j'Z_j, vec Z_j'X_j, Z_j'y_j], one row per group, of rows sorted by
    group (``starts``: each group's first row): one reduceat over the row-wise products
    [Z (x) Z, Z (x) X, Z y] (laid out one product per row: reduceat along contiguous rows is
    the faster, same sums).  Rows of several data sets stacked give each data set's own sums."""
    n, p = X.shape
    q = Z.shape[1]
    rows = np.empty((q * q + q * p + q, n))
    rows[: q * q] = (Z.T[:, None, :] * Z.T[None, :, :]).reshape(q * q, n)
    rows[q * q : q * q + q * p] = (Z.T[:, None, :] * X.T[None, :, :]).reshape(q * p, n)
    rows[q * q + q * p :] = Z.T * y
    return np.add.reduceat(rows, starts, axis=1).T


class SuffStats:
    """Per-group sufficient statistics of (y, X, Z) for one grouping factor.

    ``codes`` are integer group codes 0..m-1.  Built once per data set; every deviance evaluation
    afterwards touches only these arrays.
    """

    __slots__ = ("n", "p", "q", "m", "nj", "XtX", "Xty", "yty", "ZtZ", "ZtX", "Zty", "tril", "_ri", "_t")

    def __init__(self, y, X, Z, codes, m, sums=None):
        """``sums``: the data set's rows of :func:`group_sums` when already computed (``fit_many``
        computes them for many data sets in one pass over their stacked rows, sorted by group)."""
        y = np.asarray(y, dtype=float)
        X = np.asarray(X, dtype=float)
        Z = np.asarray(Z, dtype=float)
        codes = np.asarray(codes)
        n, p = X.shape
        q = Z.shape[1]
        self.n, self.p, self.q, self.m = n, p, q, m
        if n > 1 and np.any(codes[1:] < codes[:-1]):
            order = np.argsort(codes, kind="stable")
            y, X, Z, codes = y[order], X[order], Z[order], codes[order]
        nj = np.bincount(codes, minlength=m)
        self.nj = nj
        if sums is None:
            sums = group_sums(y, X, Z, np.concatenate(([0], np.cumsum(nj)[:-1])))
        self.ZtZ = sums[:, : q * q].reshape(m, q, q)
        self.ZtX = sums[:, q * q : q * q + q * p].reshape(m, q, p)
        self.Zty = sums[:, q * q + q * p :]
        self.XtX = X.T @ X
        self.Xty = X.T @ y
        self.yty = float(y @ y)
        self.tril = tril_index(q)
        self._ri = None
        self._t = None

    def with_response(self, Xty, yty, Zty):
        """A copy sharing the design statistics, with new response statistics (cheap refit)."""
        new = SuffStats.__new__(SuffStats)
        for s in SuffStats.__slots__:
            setattr(new, s, getattr(self, s))
        new.Xty, new.yty, new.Zty = np.asarray(Xty, float), float(yty), np.asarray(Zty, float)
        new._ri = None
        new._t = None
        return new

    def t(self):
        """Group-last layouts (q,q,m), (q,p,m), (q,m): each matrix entry a contiguous vector."""
        if self._t is None:
            self._t = (
                np.ascontiguousarray(self.ZtZ.transpose(1, 2, 0)),
                np.ascontiguousarray(self.ZtX.transpose(1, 2, 0)),
                np.ascontiguousarray(self.Zty.T),
            )
        return self._t

    def ri(self):
        """Flattened statistics for the vectorised random-intercept criterion (q == 1)."""
        if self._ri is None:
            S = self.ZtZ[:, 0, 0]
            ZX = self.ZtX[:, 0, :]
            zy = self.Zty[:, 0]
            m, p = ZX.shape
            ZXZX = (ZX[:, :, None] * ZX[:, None, :]).reshape(m, p * p)
            self._ri = (S, ZXZX, ZX * zy[:, None], zy * zy,
                        np.concatenate([ZXZX, ZX * zy[:, None], (zy * zy)[:, None]], axis=1))
        return self._ri


_TRIL = {}


def tril_index(q):
    """Row and column indices of the lower triangle read column by column (lme4's theta order);
    cached per q (read-only arrays: building them cost more than a random-intercept fit's
    optimisation in a batch)."""
    t = _TRIL.get(q)
    if t is None:
        r, c = np.tril_indices(q)
        order = np.lexsort((r, c))
        r, c = r[order], c[order]
        r.flags.writeable = False
        c.flags.writeable = False
        t = _TRIL[q] = (r, c)
    return t


def theta_lower_bounds(q):
    r, c = tril_index(q)
    return np.where(r == c, 0.0, -np.inf)


def lambda_of(theta, q, tril=None):
    r, c = tril if tril is not None else tril_index(q)
    L = np.zeros((q, q))
    L[r, c] = theta
    return L


# --------------------------------------------------------------------------------------------
# small batched linear algebra, group-last layout: a stack of q x q matrices is (q, q, m), so
# that each entry is a contiguous vector over groups; loops run over the tiny q only
# --------------------------------------------------------------------------------------------
def _chol_t(M):
    """Lower Cholesky factors of SPD stacks (q, q, m)."""
    q = M.shape[0]
    L = np.zeros_like(M)
    for j in range(q):
        s = M[j, j] - (L[j, :j] * L[j, :j]).sum(axis=0) if j else M[j, j]
        d = np.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, q):
            t = M[i, j] - (L[i, :j] * L[j, :j]).sum(axis=0) if j else M[i, j]
            L[i, j] = t / d
    return L


def _fwd_t(L, B):
    """Solve L X = B for lower-triangular stacks L (q,q,m) and B (q,k,m)."""
    q = L.shape[0]
    X = np.empty_like(B)
    for i in range(q):
        acc = B[i]
        for k in range(i):
            acc = acc - L[i, k] * X[k]
        X[i] = acc / L[i, i]
    return X


def _bwd_t(L, B):
    """Solve L' X = B for lower-triangular stacks L (q,q,m) and B (q,k,m)."""
    q = L.shape[0]
    X = np.empty_like(B)
    for i in range(q - 1, -1, -1):
        acc = B[i]
        for k in range(i + 1, q):
            acc = acc - L[k, i] * X[k]
        X[i] = acc / L[i, i]
    return X


def _mm(A, B):
    """Entry-wise stacked matrix product (a,b,m) x (b,c,m) -> (a,c,m)."""
    return np.einsum("abm,bcm->acm", A, B)


# --------------------------------------------------------------------------------------------
# the profiled deviance and everything derived from it
# --------------------------------------------------------------------------------------------
class Eval:
    """All pieces of one evaluation at theta (kept for the gradient, BLUPs and inference).

    Layouts: Lc (q,q,m) Cholesky blocks of M_j, RZX (q,p,m), cu (q,m), u (q,m).
    """

    __slots__ = (
        "theta", "Lam", "Lc", "RZX", "cu", "A", "RX", "beta", "r2", "logdetM", "logdetA",
        "dev", "u", "_Ainv", "_Minv",
    )

    @property
    def Ainv(self):
        if self._Ainv is None:
            self._Ainv = cho_solve((self.RX, True), np.eye(self.RX.shape[0]))
        return self._Ainv

    def Minv(self):
        """M_j^{-1} = L_j'^{-1} L_j^{-1}, stacked (q,q,m)."""
        if self._Minv is None:
            q, _, m = self.Lc.shape
            if q == 1:
                self._Minv = 1.0 / (self.Lc * self.Lc)
            else:
                I = np.zeros((q, q, m))
                I[np.arange(q), np.arange(q)] = 1.0
                Linv = _fwd_t(self.Lc, I)
                self._Minv = np.einsum("kam,kbm->abm", Linv, Linv)
        return self._Minv


def evaluate(theta, ss: SuffStats, reml: bool) -> Eval:
    """Profiled deviance (ML) or REML criterion at theta, with the pieces behind it."""
    q, p, n, m = ss.q, ss.p, ss.n, ss.m
    e = Eval()
    e._Minv = None
    theta = np.asarray(theta, dtype=float)
    e.theta = theta
    Lam = lambda_of(theta, q, ss.tril)
    e.Lam = Lam
    S, ZX, Zy = ss.t()
    if q == 1:
        lam = Lam[0, 0]
        Mj = lam * lam * S[0, 0] + 1.0
        lc = np.sqrt(Mj)
        f = lam / lc
        RZX = ZX[0] * f  # (p, m)
        cu = Zy[0] * f  # (m,)
        logdetM = float(np.log(Mj).sum())
        A = ss.XtX - RZX @ RZX.T
        b = ss.Xty - RZX @ cu
        cu_ss = float(cu @ cu)
        e.Lc = lc[None, None, :]
        e.RZX = RZX[None]
        e.cu = cu[None]
    else:
        LtS = (Lam.T @ S.reshape(q, q * m)).reshape(q, q, m)
        M = np.einsum("abm,bd->adm", LtS, Lam)
        M[np.arange(q), np.arange(q)] += 1.0
        Lc = _chol_t(M)
        e.Lc = Lc
        rhs = np.empty((q, p + 1, m))
        rhs[:, :p, :] = (Lam.T @ ZX.reshape(q, p * m)).reshape(q, p, m)
        rhs[:, p, :] = Lam.T @ Zy
        sol = _fwd_t(Lc, rhs)  # (q, p+1, m)
        RZX = sol[:, :p, :]
        cu = sol[:, p, :]
        logdetM = 2.0 * float(sum(np.log(Lc[i, i]).sum() for i in range(q)))
        R2 = RZX.transpose(1, 0, 2).reshape(p, q * m)
        A = ss.XtX - R2 @ R2.T
        b = ss.Xty - R2 @ cu.reshape(-1)
        cu_ss = float((cu * cu).sum())
        e.RZX = RZX
        e.cu = cu
    try:
        RX = np.linalg.cholesky(A)
    except np.linalg.LinAlgError as err:
        raise NotPositiveDefinite(str(err)) from None
    # p is small: A^{-1} explicitly (needed by the gradient and the covariance anyway)
    Ainv = np.linalg.inv(A)
    e._Ainv = Ainv
    beta = Ainv @ b
    r2 = ss.yty - cu_ss - float(b @ beta)
    if r2 <= 0:  # perfect fit; keep the criterion finite and monotone
        r2 = 1e-300
    logdetA = 2.0 * float(np.log(RX.diagonal()).sum())
    e.A, e.RX, e.beta, e.r2, e.logdetM, e.logdetA = A, RX, beta, r2, logdetM, logdetA
    if reml:
        nmp = n - p
        e.dev = logdetM + logdetA + nmp * (1.0 + LOG2PI + math.log(r2 / nmp))
    else:
        e.dev = logdetM + n * (1.0 + LOG2PI + math.log(r2 / n))
    e.u = None
    return e


def spherical_re(e: Eval, ss: SuffStats):
    """u_j = L_j'^{-1}(c_uj - R_ZXj beta), shape (q, m); the BLUPs are b_j = Lambda u_j."""
    if e.u is None:
        v = e.cu - np.einsum("qpm,p->qm", e.RZX, e.beta)  # (q,m)
        if ss.q == 1:
            e.u = v / e.Lc[0]
        else:
            e.u = _bwd_t(e.Lc, v[:, None, :])[:, 0, :]
    return e.u


def blups(e: Eval, ss: SuffStats):
    """Conditional modes b_j = Lambda u_j, shape (m, q)."""
    return (e.Lam @ spherical_re(e, ss)).T


def _grad_pieces(e: Eval, ss: SuffStats, need_A: bool):
    """Matrix gradients (q x q) of log|M|, r^2 and (optionally) log|A| with respect to Lambda."""
    q = ss.q
    Lam = e.Lam
    S, ZX, Zy = ss.t()
    u = spherical_re(e, ss)  # (q,m)
    bj = Lam @ u  # (q,m)
    Ztr = Zy - np.einsum("qpm,p->qm", ZX, e.beta) - np.einsum("abm,bm->am", S, bj)
    g_r2 = -2.0 * Ztr @ u.T
    Minv = e.Minv()
    if q == 1:
        lam = Lam[0, 0]
        SM = S[0, 0] * Minv[0, 0]
        g_M = np.array([[2.0 * lam * float(SM.sum())]])
        if not need_A:
            return g_M, g_r2, None
        P = Minv[0, 0] * lam
        K = 1.0 - SM * lam * lam
        W = e.Ainv @ ZX[0]  # (p,m)
        B = (ZX[0] * W).sum(axis=0)
        g_A = np.array([[-2.0 * float((K * B * P).sum())]])
        return g_M, g_r2, g_A
    SL = np.einsum("acm,cb->abm", S, Lam)
    g_M = 2.0 * np.einsum("abm,bcm->ac", SL, Minv)
    if not need_A:
        return g_M, g_r2, None
    P = np.einsum("abm,cb->acm", Minv, Lam)  # M^{-1} Lambda'
    K = -_mm(SL, P)
    K[np.arange(q), np.arange(q)] += 1.0
    B = np.einsum("apm,pr,brm->abm", ZX, e.Ainv, ZX, optimize=False)
    g_A = -2.0 * np.einsum("acm,dcm->ad", _mm(K, B), P)
    return g_M, g_r2, g_A


def gradient(e: Eval, ss: SuffStats, reml: bool):
    """Analytic gradient of the profiled criterion with respect to theta."""
    g_M, g_r2, g_A = _grad_pieces(e, ss, need_A=reml)
    N = ss.n - ss.p if reml else ss.n
    G = g_M + (N / e.r2) * g_r2
    if reml:
        G = G + g_A
    r, c = ss.tril
    return G[r, c]


def dW_dtheta(e: Eval, ss: SuffStats):
    """For each theta_k: T_k = sum_j Z_j'X_j' dW_j/dtheta_k Z_j'X_j (p x p); dA/dtheta_k = -T_k."""
    q = ss.q
    Lam = e.Lam
    S, ZX, _ = ss.t()
    Minv = e.Minv()
    if q == 1:
        lam = Lam[0, 0]
        P = Minv[0, 0] * lam
        K = 1.0 - S[0, 0] * lam * P
        w = 2.0 * K * P
        return [(ZX[0] * w) @ ZX[0].T]
    P = np.einsum("abm,cb->acm", Minv, Lam)
    K = -_mm(np.einsum("acm,cb->abm", S, Lam), P)
    K[np.arange(q), np.arange(q)] += 1.0
    out = []
    for r, c in zip(*ss.tril):
        # dW = K' E_rc P + P' E_cr K:  (K' E_rc P)_ab = K[r,a] P[c,b]
        KEP = K[r][:, None, :] * P[c][None, :, :]
        dW = KEP + KEP.transpose(1, 0, 2)
        out.append(np.einsum("apm,abm,brm->pr", ZX, dW, ZX))
    return out


# --------------------------------------------------------------------------------------------
# optimiser
# --------------------------------------------------------------------------------------------
_GRID_RI = np.array([0.0, 1e-3, 0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.27, 0.35, 0.45, 0.6, 0.8, 1.0, 1.3, 1.7, 2.3, 3.2, 4.5, 7.0, 12.0, 25.0, 100.0])


def ri_criterion(thetas, ss: SuffStats, reml: bool, grad: bool = True):
    """Vectorised random-intercept criterion and its derivative for a vector of theta values.

    With q = 1 the per-group algebra collapses to the weights w_j = theta^2 / (1 + theta^2 n_j):
    A = X'X - sum_j w_j (Z_j'X_j)(Z_j'X_j)',  b = X'y - sum_j w_j (Z_j'X_j)(Z_j'y_j),
    r^2 = y'y - sum_j w_j (Z_j'y_j)^2 - b'A^{-1}b; dw_j/dtheta = 2 theta / (1 + theta^2 n_j)^2.
    Returns (criterion, derivative); +inf where R_X'R_X is not positive definite.
    """
    S, ZXZX, ZXy, zy2, _ = ss.ri()
    p = ss.p
    th = np.atleast_1d(np.asarray(thetas, dtype=float))
    k = th.size
    t2 = th * th
    M = 1.0 + t2[:, None] * S[None, :]
    w = t2[:, None] / M
    A = ss.XtX[None] - (w @ ZXZX).reshape(k, p, p)
    b = ss.Xty[None] - w @ ZXy
    cuss = w @ zy2
    try:
        C = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        if k == 1:
            return np.array([np.inf]), np.array([np.nan])
        out = [ri_criterion(t, ss, reml, grad) for t in th]
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
    Ainv = np.linalg.inv(A)
    beta = np.einsum("kpr,kr->kp", Ainv, b)
    quad = np.einsum("kp,kp->k", b, beta)
    r2 = np.maximum(ss.yty - cuss - quad, 1e-300)
    logdetM = np.log(M).sum(axis=1)
    N = ss.n - p if reml else ss.n
    dev = logdetM + N * (1.0 + LOG2PI + np.log(r2 / N))
    if reml:
        dev = dev + 2.0 * np.log(np.diagonal(C, axis1=1, axis2=2)).sum(axis=1)
    if not grad:
        return dev, None
    dw = 2.0 * th[:, None] / (M * M)
    dA = -(dw @ ZXZX).reshape(k, p, p)
    db = -(dw @ ZXy)
    dquad = 2.0 * np.einsum("kp,kp->k", beta, db) - np.einsum("kp,kpr,kr->k", beta, dA, beta)
    dr2 = -(dw @ zy2) - dquad
    g = (2.0 * th[:, None] * S[None, :] / M).sum(axis=1) + N * dr2 / r2
    if reml:
        g = g + np.einsum("kpr,krp->k", Ainv, dA)
    return dev, g


def ri_scalar(t: float, ss: SuffStats, reml: bool):
    """(criterion, derivative) at one theta for q = 1: the same algebra as :func:`ri_criterion`
    with one matrix product for all group sums (the optimiser's inner loop)."""
    S, _, _, _, C = ss.ri()
    p = ss.p
    t2 = t * t
    M = 1.0 + t2 * S
    W = np.empty((2, S.size))
    np.divide(t2, M, out=W[0])
    np.divide(2.0 * t, M * M, out=W[1])
    sums = W @ C  # row 0: sums with w, row 1: with dw/dtheta
    pp = p * p
    A = ss.XtX - sums[0, :pp].reshape(p, p)
    b = ss.Xty - sums[0, pp : pp + p]
    try:
        RX = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return np.inf, np.nan
    Ainv = np.linalg.inv(A)
    beta = Ainv @ b
    r2 = ss.yty - sums[0, -1] - b @ beta
    if r2 <= 0:
        r2 = 1e-300
    N = ss.n - p if reml else ss.n
    dA = -sums[1, :pp].reshape(p, p)
    db = -sums[1, pp : pp + p]
    dr2 = -sums[1, -1] - 2.0 * (beta @ db) + beta @ dA @ beta
    dev = float(np.log(M).sum()) + N * (1.0 + LOG2PI + math.log(r2 / N))
    g = 2.0 * t * float((S / M).sum()) + N * dr2 / r2
    if reml:
        dev += 2.0 * float(np.log(RX.diagonal()).sum())
        g += float((Ainv * dA).sum())
    return dev, float(g)


class Q2Stack:
    """Random intercept + one slope (q = 2) statistics of K data sets, groups padded with zero
    statistics (a padded group contributes exactly nothing), for :func:`q2_dev_grad_stack`."""

    __slots__ = ("s00", "s01", "s11", "X0", "X1", "y0", "y1", "XtX", "Xty", "yty", "n", "p", "K", "sss")

    def __init__(self, sss):
        p = sss[0].p
        if any(ss.p != p or ss.q != 2 for ss in sss):
            raise ValueError("Q2Stack needs q = 2 statistics with one p")
        K, mmax = len(sss), max(ss.m for ss in sss)
        S = np.zeros((K, 3, mmax))
        ZX = np.zeros((K, 2, p, mmax))
        Zy = np.zeros((K, 2, mmax))
        for k, ss in enumerate(sss):
            St, ZXt, Zyt = ss.t()
            S[k, 0, : ss.m], S[k, 1, : ss.m], S[k, 2, : ss.m] = St[0, 0], St[0, 1], St[1, 1]
            ZX[k, :, :, : ss.m] = ZXt
            Zy[k, :, : ss.m] = Zyt
        self.s00, self.s01, self.s11 = S[:, 0], S[:, 1], S[:, 2]
        self.X0, self.X1 = ZX[:, 0], ZX[:, 1]
        self.y0, self.y1 = Zy[:, 0], Zy[:, 1]
        self.XtX = np.stack([ss.XtX for ss in sss])
        self.Xty = np.stack([ss.Xty for ss in sss])
        self.yty = np.array([ss.yty for ss in sss])
        self.n = np.array([ss.n for ss in sss], dtype=float)
        self.p, self.K, self.sss = p, K, list(sss)


def q2_dev_grad_stack(theta, st: Q2Stack, reml: bool, idx):
    """(criterion, gradient) for q = 2 (random intercept and one slope) for the data sets ``idx`` of ``st``
    at once, theta (len(idx), 3): :func:`evaluate` and :func:`gradient` written out for 2 x 2 blocks, every
    group quantity a vector over groups (about three times fewer array operations than the general path).
    Returns (criterion, gradient); +inf / nan where R_X'R_X is not positive definite."""
    s00, s01, s11 = st.s00[idx], st.s01[idx], st.s11[idx]
    X0, X1, y0, y1 = st.X0[idx], st.X1[idx], st.y0[idx], st.y1[idx]
    th = np.asarray(theta, dtype=float)
    l0, l1, l2 = th[:, 0:1], th[:, 1:2], th[:, 2:3]  # (K, 1) against (K, m)
    T00, T01 = s00 * l0 + s01 * l1, s01 * l2
    T10, T11 = s01 * l0 + s11 * l1, s11 * l2
    M00 = l0 * T00 + l1 * T10 + 1.0
    M01 = l0 * T01 + l1 * T11
    M11 = l2 * T11 + 1.0
    c00 = np.sqrt(M00)
    c10 = M01 / c00
    d11 = M11 - c10 * c10
    c11 = np.sqrt(d11)
    e0, e1, e2 = l0[:, :, None], l1[:, :, None], l2[:, :, None]
    R0 = (e0 * X0 + e1 * X1) / c00[:, None, :]  # (K, p, m)
    R1 = (e2 * X1 - c10[:, None, :] * R0) / c11[:, None, :]
    u0 = (l0 * y0 + l1 * y1) / c00
    u1 = (l2 * y1 - c10 * u0) / c11
    A = st.XtX[idx] - R0 @ R0.swapaxes(1, 2) - R1 @ R1.swapaxes(1, 2)
    bb = st.Xty[idx] - (R0 @ u0[:, :, None])[..., 0] - (R1 @ u1[:, :, None])[..., 0]
    K = th.shape[0]
    bad = None
    try:
        RX = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        bad = np.zeros(K, dtype=bool)
        RX = np.empty_like(A)
        for k in range(K):
            try:
                RX[k] = np.linalg.cholesky(A[k])
            except np.linalg.LinAlgError:
                bad[k] = True
                A[k] = RX[k] = np.eye(st.p)
    Ainv = np.linalg.inv(A)
    beta = (Ainv @ bb[:, :, None])[..., 0]
    r2 = np.maximum(st.yty[idx] - (u0 * u0).sum(1) - (u1 * u1).sum(1) - (bb * beta).sum(1), 1e-300)
    N = st.n[idx] - st.p if reml else st.n[idx]
    dev = np.log(M00).sum(1) + np.log(d11).sum(1) + N * (1.0 + LOG2PI + np.log(r2 / N))
    if reml:
        dev = dev + 2.0 * np.log(np.diagonal(RX, axis1=1, axis2=2)).sum(1)
    bX0 = (beta[:, None, :] @ X0)[:, 0]  # beta'Z_j'X_j rows, (K, m)
    bX1 = (beta[:, None, :] @ X1)[:, 0]
    w1 = (u1 - (beta[:, None, :] @ R1)[:, 0]) / c11
    w0 = (u0 - (beta[:, None, :] @ R0)[:, 0] - c10 * w1) / c00
    b0, b1 = l0 * w0, l1 * w0 + l2 * w1
    z0 = y0 - bX0 - (s00 * b0 + s01 * b1)
    z1 = y1 - bX1 - (s01 * b0 + s11 * b1)
    det = M00 * M11 - M01 * M01
    i00, i01, i11 = M11 / det, -M01 / det, M00 / det
    k_ = (N / r2)[:, None]
    G = np.empty((K, 3))
    G[:, 0] = (2.0 * (T00 * i00 + T01 * i01) - 2.0 * k_ * z0 * w0).sum(1)
    G[:, 1] = (2.0 * (T10 * i00 + T11 * i01) - 2.0 * k_ * z1 * w0).sum(1)
    G[:, 2] = (2.0 * (T10 * i01 + T11 * i11) - 2.0 * k_ * z1 * w1).sum(1)
    if reml:
        P00, P01 = i00 * l0, i00 * l1 + i01 * l2
        P10, P11 = i01 * l0, i01 * l1 + i11 * l2
        K00 = 1.0 - (T00 * P00 + T01 * P10)
        K01 = -(T00 * P01 + T01 * P11)
        K10 = -(T10 * P00 + T11 * P10)
        K11 = 1.0 - (T10 * P01 + T11 * P11)
        W0, W1 = Ainv @ X0, Ainv @ X1
        B00 = (X0 * W0).sum(1)
        B01 = (X1 * W0).sum(1)
        B11 = (X1 * W1).sum(1)
        KB00, KB01 = K00 * B00 + K01 * B01, K00 * B01 + K01 * B11
        KB10, KB11 = K10 * B00 + K11 * B01, K10 * B01 + K11 * B11
        G[:, 0] -= 2.0 * (KB00 * P00 + KB01 * P01).sum(1)
        G[:, 1] -= 2.0 * (KB10 * P00 + KB11 * P01).sum(1)
        G[:, 2] -= 2.0 * (KB10 * P10 + KB11 * P11).sum(1)
    if bad is not None and bad.any():
        dev[bad] = np.inf
        G[bad] = np.nan
    return dev, G


class OptResult:
    __slots__ = ("theta", "e", "converged", "message", "nfev", "grad")


def _safe_dev(theta, ss, reml):
    try:
        return evaluate(theta, ss, reml).dev
    except NotPositiveDefinite:
        return np.inf


class RIStack:
    """The random-intercept statistics of K data sets stacked for the batched criterion.

    Groups are padded to the largest m with zero statistics (S_j = 0, Z_j'X_j = 0, Z_j'y_j = 0),
    which contribute exactly nothing to any sum (log M_j = log 1 = 0), so a padded data set's
    criterion is its own.  All data sets must have the same number p of fixed effects.
    """

    __slots__ = ("S", "C", "XtX", "Xty", "yty", "n", "p", "K", "sss")

    def __init__(self, sss):
        p = sss[0].p
        if any(ss.p != p or ss.q != 1 for ss in sss):
            raise ValueError("RIStack needs random-intercept statistics with one p")
        K = len(sss)
        mmax = max(ss.m for ss in sss)
        c = p * p + p + 1
        self.S = np.zeros((K, mmax))
        self.C = np.zeros((K, mmax, c))
        for k, ss in enumerate(sss):
            S, _, _, _, C = ss.ri()
            self.S[k, : ss.m] = S
            self.C[k, : ss.m] = C
        self.XtX = np.stack([ss.XtX for ss in sss])
        self.Xty = np.stack([ss.Xty for ss in sss])
        self.yty = np.array([ss.yty for ss in sss])
        self.n = np.array([ss.n for ss in sss], dtype=float)
        self.p, self.K, self.sss = p, K, list(sss)


def ri_criterion_stack(th, st: RIStack, reml: bool, idx=None):
    """Random-intercept criterion and derivative for K data sets x G thetas at once.

    ``th`` is (K, G) (or (K,) for one theta per data set); ``idx`` selects the data sets of
    ``st`` the rows of ``th`` belong to.  The algebra is that of :func:`ri_criterion` with a
    leading data-set axis: one batched matrix product gives every group sum of every data set.
    Returns (criterion, derivative) of th's shape; +inf / nan where R_X'R_X is not positive
    definite.
    """
    th = np.asarray(th, dtype=float)
    one = th.ndim == 1
    if one:
        th = th[:, None]
    if idx is None:
        S, C, XtX, Xty, yty, n = st.S, st.C, st.XtX, st.Xty, st.yty, st.n
    else:
        S, C, XtX, Xty, yty, n = st.S[idx], st.C[idx], st.XtX[idx], st.Xty[idx], st.yty[idx], st.n[idx]
    p = st.p
    pp = p * p
    K, G = th.shape
    t2 = th * th
    M = 1.0 + t2[:, :, None] * S[:, None, :]  # (K, G, m)
    iM = 1.0 / M
    WD = np.empty((K, 2 * G, M.shape[2]))
    np.multiply(t2[:, :, None], iM, out=WD[:, :G])  # w_j
    np.multiply((2.0 * th)[:, :, None], iM * iM, out=WD[:, G:])  # dw_j / dtheta
    sums = WD @ C  # (K, 2G, c): every group sum of every data set in one product
    sw, sd = sums[:, :G], sums[:, G:]
    A = XtX[:, None] - sw[..., :pp].reshape(K, G, p, p)
    b = Xty[:, None] - sw[..., pp : pp + p]
    bad = None
    try:
        R = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        bad = np.zeros((K, G), dtype=bool)
        R = np.empty_like(A)
        for k in range(K):
            for gi in range(G):
                try:
                    R[k, gi] = np.linalg.cholesky(A[k, gi])
                except np.linalg.LinAlgError:
                    bad[k, gi] = True
                    R[k, gi] = np.eye(p)
                    A[k, gi] = np.eye(p)
    Ainv = np.linalg.inv(A)
    beta = (Ainv @ b[..., None])[..., 0]
    r2 = np.maximum(yty[:, None] - sw[..., -1] - (b * beta).sum(axis=-1), 1e-300)
    N = (n - p if reml else n)[:, None]
    dev = np.log(M).sum(axis=-1) + N * (1.0 + LOG2PI + np.log(r2 / N))
    dA = -sd[..., :pp].reshape(K, G, p, p)
    db = -sd[..., pp : pp + p]
    dr2 = -sd[..., -1] - (beta * (2.0 * db - (dA @ beta[..., None])[..., 0])).sum(axis=-1)
    g = 2.0 * th * (S[:, None, :] * iM).sum(axis=-1) + N * dr2 / r2
    if reml:
        dev = dev + 2.0 * np.log(np.diagonal(R, axis1=2, axis2=3)).sum(axis=-1)
        g = g + (Ainv * dA.swapaxes(2, 3)).sum(axis=(2, 3))
    if bad is not None and bad.any():
        dev[bad] = np.inf
        g[bad] = np.nan
    if one:
        return dev[:, 0], g[:, 0]
    return dev, g


def _ri_roots(st, reml, idx, a, b, ga, gb, xtol=1e-14, rtol=1e-13, maxiter=200):
    """Roots of the derivative on brackets [a, b] with g(a) < 0 < g(b), for the data sets idx at
    once: a safeguarded secant method.  The secant through the last two iterates is taken when
    it falls inside the current bracket, bisection otherwise and after two steps that did not
    halve the bracket; every evaluation shrinks the bracket.  Each data set stops on its own
    (bracket or step below xtol + rtol |x|, or g(x) == 0); the arithmetic of one data set never
    depends on the others, so a batch gives each data set the same root as a batch of one."""
    if len(idx) == 1:
        x, nf = _ri_root1(st.sss[idx[0]], reml, float(a[0]), float(b[0]), float(ga[0]), float(gb[0]), xtol, rtol, maxiter)
        return np.array([x]), np.array([nf])
    a, b, ga, gb = (np.array(v, dtype=float) for v in (a, b, ga, gb))
    x0, g0, x1, g1 = a.copy(), ga.copy(), b.copy(), gb.copy()  # the last two iterates
    slow = np.zeros(a.size, dtype=int)
    active = np.ones(a.size, dtype=bool)
    nfev = np.zeros(a.size, dtype=int)
    for _ in range(maxiter):
        act = np.nonzero(active)[0]
        if act.size == 0:
            break
        aa, bb = a[act], b[act]
        p0, q0, p1, q1 = x0[act], g0[act], x1[act], g1[act]
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = p1 - q1 * (p1 - p0) / (q1 - q0)
        ok = np.isfinite(xs) & (xs > aa) & (xs < bb) & (slow[act] < 2)
        xn = np.where(ok, xs, 0.5 * (aa + bb))
        _, gx = ri_criterion_stack(xn, st, reml, idx[act])
        nfev[act] += 1
        step = np.abs(xn - p1)
        w0 = bb - aa
        neg = gx < 0
        pos = gx > 0
        na, nb = aa.copy(), bb.copy()
        na[neg] = xn[neg]
        nb[pos] = xn[pos]
        a[act], b[act] = na, nb
        x0[act], g0[act], x1[act], g1[act] = p1, q1, xn, gx
        halved = (nb - na) <= 0.5 * w0
        slow[act] = np.where(halved | ~ok, 0, slow[act] + 1)
        tol = xtol + rtol * np.abs(xn)
        done = ~(neg | pos) | ((nb - na) <= tol) | (ok & (step <= 0.5 * tol))
        active[act[done]] = False
    return x1, nfev


def _ri_root1(ss, reml, a, b, ga, gb, xtol, rtol, maxiter):
    """:func:`_ri_roots` for one data set: the same steps and stopping rules with Python floats
    and :func:`ri_scalar` (the same algebra for one theta, equal to rounding), without the
    array bookkeeping that dominates a batch of one."""
    x0, g0, x1, g1 = a, ga, b, gb
    slow = 0
    nfev = 0
    for _ in range(maxiter):
        d = g1 - g0
        xs = x1 - g1 * (x1 - x0) / d if d != 0 else math.nan
        ok = math.isfinite(xs) and a < xs < b and slow < 2
        xn = xs if ok else 0.5 * (a + b)
        gx = ri_scalar(xn, ss, reml)[1]
        nfev += 1
        step = abs(xn - x1)
        w0 = b - a
        if gx < 0:
            a = xn
        elif gx > 0:
            b = xn
        x0, g0, x1, g1 = x1, g1, xn, gx
        slow = 0 if ((b - a) <= 0.5 * w0 or not ok) else slow + 1
        tol = xtol + rtol * abs(xn)
        if not (gx < 0 or gx > 0) or (b - a) <= tol or (ok and step <= 0.5 * tol):
            break
    return x1, nfev


def optimize_ri_batch(sss, reml: bool, rel_tol: float = 1e-3):
    """Random intercept for K data sets at once (same p): a list of :class:`OptResult`, or of
    :class:`NotPositiveDefinite` for a data set whose final fit is degenerate.

    The vectorised criterion is evaluated for every data set on a grid of theta (ICC from 1e-6
    to 0.9999) that includes the boundary theta = 0.  Where the analytic derivative changes sign
    around the best grid point, its root is found for all those data sets together
    (:func:`_ri_roots`: a safeguarded secant with bisection, to 1e-14 + 1e-13 |theta|);
    otherwise the criterion of that data set is minimised by bounded Brent (scipy).  The
    boundary value is always compared explicitly: the derivative at theta = 0 is exactly zero,
    so a gradient-only test could not see a boundary optimum.  :func:`optimize_ri` is this
    function with one data set, so single and batched fits agree.
    """
    st = RIStack(sss)
    K = st.K
    grid = _GRID_RI
    G = grid.size
    devs, grads = ri_criterion_stack(np.broadcast_to(grid, (K, G)), st, reml)
    i = np.argmin(devs, axis=1)
    kk = np.arange(K)
    nfev = np.full(K, G)
    inner = (i > 0) & (i < G - 1)
    il, ih = np.clip(i - 1, 0, G - 1), np.clip(i + 1, 0, G - 1)
    br = inner & (grads[kk, il] < 0) & (grads[kk, ih] > 0)
    t_new = np.full(K, np.nan)
    d_new = np.full(K, np.inf)
    idx = np.nonzero(br)[0]
    if idx.size:
        x, nf = _ri_roots(st, reml, idx, grid[il[idx]], grid[ih[idx]], grads[idx, il[idx]], grads[idx, ih[idx]])
        nfev[idx] += nf + 1
        d, _ = ri_criterion_stack(x, st, reml, idx)
        t_new[idx], d_new[idx] = x, d
    for k in np.nonzero(~br)[0]:
        ss = sss[k]
        if i[k] == 0:
            lo, hi = 0.0, float(grid[1])
        elif i[k] == G - 1:
            lo, hi = float(grid[-2]), float(grid[-1]) * 1e3
        else:
            lo, hi = float(grid[i[k] - 1]), float(grid[i[k] + 1])
        res = optimize.minimize_scalar(
            lambda t, ss=ss: ri_scalar(t, ss, reml)[0], bounds=(lo, hi), method="bounded",
            options={"xatol": 1e-12 * max(1.0, hi), "maxiter": 500},
        )
        nfev[k] += res.nfev
        t_new[k], d_new[k] = float(res.x), float(res.fun)
    out = []
    for k in range(K):
        ss = sss[k]
        cands = [(float(devs[k, 0]), 0.0), (float(devs[k, i[k]]), float(grid[i[k]]))]
        if np.isfinite(t_new[k]):
            cands.append((float(d_new[k]), float(t_new[k])))
        dev, t = min(cands)
        if devs[k, 0] <= dev + 1e-9:  # the boundary is as good (to rounding): report theta = 0
            dev, t = float(devs[k, 0]), 0.0
        try:
            e = evaluate(np.array([t]), ss, reml)
        except NotPositiveDefinite as err:
            out.append(err)
            continue
        o = OptResult()
        o.theta = np.array([t])
        o.e = e
        o.nfev = int(nfev[k])
        gr = gradient(e, ss, reml) if t > 0 else np.zeros(1)
        o.grad = gr
        o.converged = bool(np.all(np.isfinite(gr)) and abs(gr[0]) * max(t, 1.0) < rel_tol)
        o.message = "converged" if o.converged else f"gradient {gr[0]:.3g} at theta={t:.6g}"
        out.append(o)
    return out


def optimize_ri(ss: SuffStats, reml: bool, rel_tol: float = 1e-3) -> OptResult:
    """Random intercept, one data set: :func:`optimize_ri_batch` with a batch of one."""
    o = optimize_ri_batch([ss], reml, rel_tol)[0]
    if isinstance(o, Exception):
        raise o
    return o


_LBFGS_OPTS = {"ftol": 1e-12, "gtol": 1e-8, "maxiter": 1000, "maxcor": 20}


def _bfgs_stack(st, reml, idx, x0, fixed=None, gtol=1e-7, ftol=1e-13, maxiter=300):
    """Minimise the q = 2 criterion for the data sets ``idx`` at once: BFGS (inverse-Hessian
    update, Armijo backtracking from the unit step) with per-data-set convergence masks.
    ``fixed`` (K, 3) marks coordinates held at their start value (the boundary re-fit).  Each
    data set's arithmetic is independent of the others, so a batch of one gives the same
    result.  Returns (x, f, nfev, converged)."""
    x = np.array(x0, dtype=float)
    K = x.shape[0]
    free = np.ones_like(x) if fixed is None else (~np.asarray(fixed)).astype(float)
    f, g = q2_dev_grad_stack(x, st, reml, idx)
    g = g * free
    nfev = np.ones(K, dtype=int)
    H = np.broadcast_to(np.eye(3), (K, 3, 3)).copy()
    active = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
    conv = np.zeros(K, dtype=bool)
    first = np.ones(K, dtype=bool)
    for _ in range(maxiter):
        act = np.nonzero(active)[0]
        if act.size == 0:
            break
        xa, fa, ga, Ha = x[act], f[act], g[act], H[act]
        d = -(Ha @ ga[:, :, None])[..., 0] * free[act]
        slope = (d * ga).sum(1)
        reset = ~(slope < 0)
        if reset.any():
            Ha[reset] = np.eye(3)
            d[reset] = -ga[reset] * free[act][reset]
            slope[reset] = (d[reset] * ga[reset]).sum(1)
        # a step moves no coordinate by more than 0.5 max(|theta|, 1) (theta is a relative scale;
        # early curvature estimates can propose steps far out on the flat tails)
        dmax = np.max(np.abs(d) / np.maximum(np.abs(xa), 1.0), axis=1)
        alpha = np.minimum(1.0, 0.5 / np.maximum(dmax, 1e-300))
        xn, fn, gn = xa.copy(), fa.copy(), ga.copy()
        todo = np.ones(act.size, dtype=bool)
        for _ls in range(40):
            t = np.nonzero(todo)[0]
            if t.size == 0:
                break
            xt = xa[t] + alpha[t, None] * d[t]
            ft, gt = q2_dev_grad_stack(xt, st, reml, idx[act[t]])
            nfev[act[t]] += 1
            ok = np.isfinite(ft) & (ft <= fa[t] + 1e-4 * alpha[t] * slope[t])
            xn[t[ok]], fn[t[ok]], gn[t[ok]] = xt[ok], ft[ok], gt[ok] * free[act[t[ok]]]
            todo[t[ok]] = False
            # backtrack to the minimum of the quadratic through f(0), f'(0), f(alpha),
            # kept within [0.1, 0.5] alpha
            nk = t[~ok]
            if nk.size:
                al, ftn = alpha[nk], ft[~ok]
                with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                    aq = -slope[nk] * al * al / (2.0 * (ftn - fa[nk] - slope[nk] * al))
                aq = np.where(np.isfinite(aq), aq, 0.5 * al)
                alpha[nk] = np.clip(aq, 0.1 * al, 0.5 * al)
        failed = todo  # no decrease along d: as good as it gets in double precision
        s_ = xn - xa
        y_ = gn - ga
        sy = (s_ * y_).sum(1)
        upd = ~failed & (sy > 1e-12 * np.sqrt((s_ * s_).sum(1) * (y_ * y_).sum(1)))
        if upd.any():
            u = np.nonzero(upd)[0]
            Hu = Ha[u]
            if np.any(first[act[u]]):  # scale the initial inverse Hessian (Nocedal & Wright 6.20)
                f1 = first[act[u]]
                Hu[f1] = np.eye(3) * (sy[u][f1] / (y_[u][f1] * y_[u][f1]).sum(1))[:, None, None]
            rho = 1.0 / sy[u]
            I = np.eye(3)
            V = I - rho[:, None, None] * s_[u][:, :, None] * y_[u][:, None, :]
            Hu = V @ Hu @ V.swapaxes(1, 2) + rho[:, None, None] * s_[u][:, :, None] * s_[u][:, None, :]
            Ha[u] = Hu
        x[act], f[act], g[act], H[act] = xn, fn, gn, Ha
        first[act] = False
        scale = np.maximum(np.abs(xn), 1.0)
        gsmall = np.max(np.abs(gn) * scale, axis=1) < gtol
        fsmall = ~failed & (fa - fn <= ftol * np.maximum(np.abs(fn), 1.0)) & (np.max(np.abs(gn) * scale, axis=1) < 1e3 * gtol)
        done = gsmall | fsmall | failed
        conv[act[done]] = True
        active[act[done]] = False
    return x, f, nfev, conv


def optimize_q2_batch(sss, reml: bool, rel_tol: float = 1e-3, theta0=None):
    """Random intercept and one slope for K data sets at once (same p): a list of
    :class:`OptResult` (or :class:`NotPositiveDefinite` for a degenerate data set).

    The criterion and its analytic gradient are evaluated for all data sets still iterating in
    one vectorised call (:func:`q2_dev_grad_stack`); the optimiser is BFGS with per-data-set
    convergence (:func:`_bfgs_stack`), unconstrained (the criterion is invariant to the sign of
    a column of Lambda) and sign-normalised afterwards.  Then, as lme4 does, every diagonal
    element below 1e-3 is fixed at exactly zero, the others re-optimised, and the better of the
    two solutions kept.  :func:`optimize_general` with q = 2 is this function for one data set.
    """
    st = Q2Stack(sss)
    K = st.K
    allk = np.arange(K)
    x0 = np.tile(np.array([1.0, 0.0, 1.0]) if theta0 is None else np.asarray(theta0, float), (K, 1))
    x, f, nfev, _ = _bfgs_stack(st, reml, allk, x0)
    diag = np.array([True, False, True])
    best = np.array([canonical_theta(xk, 2, sss[0].tril) for xk in x])
    bestf = f.copy()
    small = diag[None, :] & (best < 1e-3)
    re = np.nonzero(small.any(1))[0]
    if re.size:
        th0 = best[re].copy()
        th0[small[re]] = 0.0
        x2, f2, nf2, _ = _bfgs_stack(st, reml, re, th0, fixed=small[re])
        nfev[re] += nf2
        for j, k in enumerate(re):
            if f2[j] <= bestf[k]:
                t = canonical_theta(x2[j], 2, sss[0].tril)
                t[small[k]] = 0.0
                best[k], bestf[k] = t, f2[j]
    out = []
    for k in range(K):
        ss = sss[k]
        try:
            e = evaluate(best[k], ss, reml)
        except NotPositiveDefinite as err:
            out.append(err)
            continue
        g = gradient(e, ss, reml)
        at_bound = diag & (best[k] <= 0.0)
        gp = np.where(at_bound, 0.0, g)
        o = OptResult()
        o.theta, o.e, o.nfev, o.grad = best[k], e, int(nfev[k]), g
        sc = np.maximum(np.abs(best[k]), 1.0)
        o.converged = bool(np.all(np.isfinite(gp)) and np.max(np.abs(gp) * sc) < rel_tol)
        o.message = "converged" if o.converged else f"max |gradient| {np.max(np.abs(gp)):.3g}"
        out.append(o)
    return out


def canonical_theta(theta, q, tril=None):
    """Flip the sign of every column of Lambda whose diagonal is negative (Lambda Lambda' and
    the criterion are unchanged), so that the diagonal is non-negative as lme4 reports it."""
    tril = tril if tril is not None else tril_index(q)
    L = lambda_of(theta, q, tril)
    sgn = np.where(np.diag(L) < 0, -1.0, 1.0)
    L = L * sgn[None, :]
    return L[tril]


def optimize_general(ss: SuffStats, reml: bool, theta0=None, rel_tol: float = 1e-3) -> OptResult:
    """Random intercept and slopes: quasi-Newton (L-BFGS-B) over theta with the analytic gradient.
    With q = 2 (one slope) this is :func:`optimize_q2_batch` with a batch of one (BFGS on the
    batched 2 x 2 criterion, the same boundary rule), so that batched and single fits agree.

    The criterion is invariant to the sign of each column of Lambda, so the diagonal need not be
    bounded: the optimiser runs unconstrained (a bounded gradient method can stall exactly on
    the boundary, where the derivative of a diagonal element is zero by symmetry) and the columns
    are sign-normalised afterwards.  Then the boundary is checked explicitly, as lme4 does: every
    diagonal element below 1e-3 is fixed at exactly zero, the others re-optimised, and the better
    of the two solutions kept.
    """
    q = ss.q
    if q == 2:  # random intercept and one slope: the batched optimiser with a batch of one
        o = optimize_q2_batch([ss], reml, rel_tol, theta0)[0]
        if isinstance(o, Exception):
            raise o
        return o
    lb = theta_lower_bounds(q)
    diag = np.isfinite(lb)
    if theta0 is None:
        theta0 = np.where(diag, 1.0, 0.0)
    cache = {}

    def fg(th):
        key = th.tobytes()
        if key not in cache:
            try:
                e = evaluate(th, ss, reml)
                dg = (e.dev, gradient(e, ss, reml))
                cache.clear()
                cache[key] = dg
            except NotPositiveDefinite:
                return np.inf, np.zeros_like(th)
        return cache[key]

    nfev = 0

    def run(th0, bnds=None):
        nonlocal nfev
        r = optimize.minimize(
            fg, th0, jac=True, method="L-BFGS-B", bounds=bnds,
            options=_LBFGS_OPTS,
        )
        nfev += r.nfev
        return np.asarray(r.x, float), float(r.fun), str(r.message)

    x, f, msg = run(np.asarray(theta0, float))
    best_theta, best_dev = canonical_theta(x, q, ss.tril), f
    small = diag & (best_theta < 1e-3)
    if np.any(small):
        th0 = best_theta.copy()
        th0[small] = 0.0
        bnds = [(0.0, 0.0) if s else (None, None) for s in small]
        x2, f2, _ = run(th0, bnds)
        if f2 <= best_dev:
            best_theta, best_dev = canonical_theta(x2, q, ss.tril), f2
            best_theta[small] = 0.0
    e = evaluate(best_theta, ss, reml)
    g = gradient(e, ss, reml)
    # at a zero diagonal the derivative vanishes by symmetry; the boundary comparison above
    # decided optimality there, so only the free parameters enter the convergence test
    at_bound = diag & (best_theta <= 0.0)
    gp = np.where(at_bound, 0.0, g)
    out = OptResult()
    out.theta, out.e, out.nfev, out.grad = best_theta, e, nfev, g
    scale = np.maximum(np.abs(best_theta), 1.0)
    out.converged = bool(np.all(np.isfinite(gp)) and np.max(np.abs(gp) * scale) < rel_tol)
    out.message = "converged" if out.converged else f"max |gradient| {np.max(np.abs(gp)):.3g} ({msg})"
    return out
