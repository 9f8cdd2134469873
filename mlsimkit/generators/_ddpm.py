"""Internals of the diffusion generator: table codec, Gaussian diffusion, denoiser, classifier.

Written from the descriptions in Ho et al. (2020, DDPM), Song et al. (2021, DDIM), Nichol & Dhariwal
(2021, cosine schedule), Dhariwal & Nichol (2021, classifier guidance), Kotelnikov et al. (2023, TabDDPM)
and Pang et al. (2024, ClavaDDPM). No code of those projects is used.

Encoding (:class:`TableCodec`)
    numerical columns: scikit-learn ``QuantileTransformer`` to a standard normal (as TabDDPM), inverted
    after sampling (which also keeps values inside the observed range), then clipped to the schema's
    ``min`` / ``max`` and rounded for ``integer: true``;
    binary / categorical / ordinal columns: one-hot coded as -1 / +1 and diffused with the *same*
    Gaussian process as the numerical ones (a continuous relaxation, "analog bits" of Chen et al. 2023);
    decoded by the argmax over the column's levels. We chose this over TabDDPM's multinomial diffusion
    because (a) classifier guidance is a gradient of ``log p(group | x_t)`` with respect to ``x_t``,
    which is defined for every coordinate of a continuous state but not for a discrete multinomial
    state, so with the relaxation the guidance reaches the categorical columns too (with multinomial
    diffusion it can only steer the numerical ones); (b) DDIM's strided, few-step sampler is defined for
    the Gaussian process, while strided multinomial sampling needs its own derivation; (c) one matrix
    and one network pass per step keep sampling fast. The cost: the network has to learn to put mass
    near the vertices, and argmax decoding cannot express "between two categories"; for the binary and
    small categorical columns of school data this is not a limitation in practice.

Diffusion (:class:`GaussianDiffusion`)
    cosine noise schedule with ``T`` steps, epsilon-prediction trained with mean-squared error, sampled by
    DDIM on a strided sub-sequence of ``S`` steps (``eta = 0`` deterministic; ``eta = 1`` with ``S = T``
    is ancestral DDPM sampling). The predicted clean row is clipped to the range of the training
    encodings at each step (the usual "clip x0" stabiliser for few-step samplers). Classifier guidance
    (Dhariwal & Nichol 2021, their algorithm 2 for DDIM): ``eps <- eps - sqrt(1 - abar_t) * s * grad_x
    log p(y | x_t, t)``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import QuantileTransformer
from torch import nn

from ..schema import Table


# ===================================================================== encoding
class TableCodec:
    """Encode a table's variables into a float matrix and back (see module docstring)."""

    def __init__(self, table: Table, frame: pd.DataFrame, *, random_state: int = 0, max_quantiles: int = 1000):
        self.table_name = table.name
        self.columns = table.data_columns
        self.kinds = {c: table.columns[c].kind for c in self.columns}
        self.spec = {c: table.columns[c] for c in self.columns}
        self.numerical = [c for c in self.columns if self.kinds[c] == "numerical"]
        self.categorical = [c for c in self.columns if self.kinds[c] != "numerical"]
        self.levels = {c: list(table.columns[c].levels) for c in self.categorical}
        self.qt_ = None
        if self.numerical:
            n = len(frame)
            self.qt_ = QuantileTransformer(output_distribution="normal", n_quantiles=max(2, min(max_quantiles, n)),
                                           subsample=10**9, random_state=random_state)
            self.qt_.fit(frame[self.numerical].to_numpy(dtype=float))
        # column slices in the encoded matrix
        self.slices = {}
        pos = len(self.numerical)
        for c in self.categorical:
            k = len(self.levels[c])
            self.slices[c] = slice(pos, pos + k)
            pos += k
        self.dim = pos
        enc = self.encode(frame)
        span = enc.max(0) - enc.min(0)
        self.lo_ = (enc.min(0) - 0.05 * span).astype(np.float32)
        self.hi_ = (enc.max(0) + 0.05 * span).astype(np.float32)
        self.lo_[len(self.numerical):] = -1.0
        self.hi_[len(self.numerical):] = 1.0

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.full((len(frame), self.dim), -1.0, dtype=np.float32)
        if self.numerical:
            out[:, : len(self.numerical)] = self.qt_.transform(frame[self.numerical].to_numpy(dtype=float))
        for c in self.categorical:
            codes = pd.Categorical(frame[c], categories=self.levels[c]).codes
            block = out[:, self.slices[c]]
            block[np.arange(len(frame)), codes] = 1.0
        return out

    def one_hot_columns(self, frame: pd.DataFrame) -> np.ndarray:
        """The encoding used for clustering: numerical normal scores, categories one-hot (0/1)."""
        enc = self.encode(frame)
        enc[:, len(self.numerical):] = (enc[:, len(self.numerical):] + 1.0) / 2.0
        return enc

    def decode(self, x: np.ndarray) -> dict:
        """Columns (numpy arrays / pandas Categoricals) from an encoded matrix."""
        out = {}
        if self.numerical:
            num = self.qt_.inverse_transform(np.asarray(x[:, : len(self.numerical)], dtype=float))
            for j, c in enumerate(self.numerical):
                v = num[:, j]
                col = self.spec[c]
                if col.min is not None or col.max is not None:
                    v = np.clip(v, -np.inf if col.min is None else col.min, np.inf if col.max is None else col.max)
                if col.integer:
                    v = np.round(v)
                out[c] = v.astype(float)
        for c in self.categorical:
            codes = np.argmax(x[:, self.slices[c]], axis=1)
            out[c] = pd.Categorical.from_codes(codes, categories=self.levels[c], ordered=self.kinds[c] == "ordinal")
        return out


# ===================================================================== networks
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer) timesteps, shape (len(t), dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


def _mlp(d_in: int, hidden, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    layers, prev = [], d_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        prev = h
    layers.append(nn.Linear(prev, d_out))
    return nn.Sequential(*layers)


class _TimeConditioned(nn.Module):
    """``h = proj(x) + time_mlp(sinusoid(t)) [+ label_embedding(y)]``, then an MLP with ReLU (as TabDDPM's;
    ReLU rather than SiLU in the wide layers also makes a sampling step about a fifth cheaper on a CPU)."""

    def __init__(self, d_in: int, hidden, d_out: int, dim_t: int = 128, n_classes: int = 0, dropout: float = 0.0):
        super().__init__()
        self.dim_t = dim_t
        self.proj = nn.Linear(d_in, dim_t)
        self.time = nn.Sequential(nn.Linear(dim_t, dim_t), nn.SiLU(), nn.Linear(dim_t, dim_t))
        self.label = nn.Embedding(n_classes, dim_t) if n_classes else None
        self.net = _mlp(dim_t, hidden, d_out, dropout)

    def embedding(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Time embedding (plus label embedding when the network has labels and ``y`` is given)."""
        emb = self.time(timestep_embedding(t, self.dim_t))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        # t: shape (n,) or (1,) (one timestep for the whole batch: embedded once and broadcast)
        return self.net(self.proj(x) + self.embedding(t, y))

    def _linears(self) -> list[nn.Linear]:
        return [self.proj] + [m for m in self.net if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def infer(self, x: torch.Tensor, emb: torch.Tensor, *, keep: bool = False):
        """``forward(x, t, y)`` for sampling, given ``emb = embedding(t, y)``; equal up to rounding.

        Two savings, both exact algebra: ``proj`` and the first hidden layer have no activation between
        them, so they are merged into one ``d_in x h1`` layer (for a 6-column table and ``h1 = 128`` this
        removes a third of the multiply-adds); and the layers run as fused ``addmm`` with in-place ReLU,
        which on a CPU is much faster than the module chain on cache-sized row blocks. Dropout is skipped
        (inference). With ``keep`` also returns the merged weight and the ReLU masks, which
        :meth:`NoisyClassifier.log_prob_grad` needs for its backward pass.
        """
        proj, *layers = self._linears()
        w = layers[0].weight @ proj.weight
        h = torch.addmm(torch.addmm(layers[0].bias, proj.bias + emb, layers[0].weight.t()), x, w.t())
        masks = []
        for j, layer in enumerate(layers):
            if j:
                h = torch.addmm(layer.bias, h, layer.weight.t())
            if j < len(layers) - 1:
                h.relu_()
                if keep:
                    masks.append(h > 0)
        return (h, w, masks) if keep else h


class Denoiser(_TimeConditioned):
    """Epsilon-predicting MLP (TabDDPM-style), optionally conditioned on a class label."""

    def __init__(self, d_in: int, hidden=(256, 256), dim_t: int = 128, n_classes: int = 0, dropout: float = 0.0):
        super().__init__(d_in, hidden, d_in, dim_t, n_classes, dropout)
        #: constructor arguments: a saved model rebuilds the network from them (see ``modelfile``)
        self.init_args = dict(d_in=d_in, hidden=tuple(hidden), dim_t=dim_t, n_classes=n_classes, dropout=dropout)


class NoisyClassifier(_TimeConditioned):
    """``p(group | x_t, t)``: an MLP on a noisy row and its timestep; returns logits."""

    def __init__(self, d_in: int, n_classes: int, hidden=(128, 128), dim_t: int = 128, dropout: float = 0.0):
        super().__init__(d_in, hidden, n_classes, dim_t, 0, dropout)
        self.init_args = dict(d_in=d_in, n_classes=n_classes, hidden=tuple(hidden), dim_t=dim_t, dropout=dropout)

    @torch.no_grad()
    def log_prob_grad(self, x: torch.Tensor, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``grad_x log p(y | x, t)`` per row (``emb = embedding(t)``), by a hand-written backward pass.

        ``d log softmax(z)_y / dz = onehot(y) - softmax(z)``, then back through each linear layer
        (multiply by its weight) and ReLU (keep where the unit was active). Equal to autograd's gradient
        up to rounding (tested) and several times cheaper on a CPU than building the autograd graph at
        every sampling step."""
        logits, w, masks = self.infer(x, emb, keep=True)
        g = torch.softmax(logits, dim=1).neg_()
        g.scatter_add_(1, y[:, None], torch.ones_like(g[:, :1]))
        layers = self._linears()[1:]
        for j in range(len(layers) - 1, 0, -1):
            g = (g @ layers[j].weight).mul_(masks[j - 1])
        return g @ w


# ===================================================================== diffusion
def cosine_alpha_bar(T: int, s: float = 0.008) -> np.ndarray:
    """``abar_t`` for t = 1..T of the cosine schedule (Nichol & Dhariwal 2021), betas capped at 0.999."""
    steps = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    betas = np.clip(1 - abar[1:] / abar[:-1], 0.0, 0.999)
    return np.cumprod(1 - betas)


class GaussianDiffusion:
    """Forward process, training loss and the DDIM sampler (see module docstring)."""

    def __init__(self, T: int = 1000):
        self.T = int(T)
        self.abar = cosine_alpha_bar(self.T)  # index k <-> timestep k+1

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.abar, dtype=torch.float32, device=t.device)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self._abar(t)[:, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def loss(self, model, x0, y, gen) -> torch.Tensor:
        n = x0.shape[0]
        t = torch.randint(0, self.T, (n,), generator=gen, device=x0.device)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device)
        eps = model(self.q_sample(x0, t, noise), t, y)
        return torch.mean((eps - noise) ** 2)

    def timesteps(self, steps: int | None) -> np.ndarray:
        """The decreasing strided timestep indices used by the sampler (all T when ``steps`` is None)."""
        if steps is None or steps >= self.T:
            return np.arange(self.T - 1, -1, -1)
        return np.unique(np.round(np.linspace(0, self.T - 1, int(steps))).astype(int))[::-1]

    @torch.no_grad()
    def sample(self, model, n: int, dim: int, *, gen, device, y=None, lo=None, hi=None, steps=50, eta=0.0,
               classifier=None, guidance_scale: float = 0.0, guide_y=None, block: int = 2048) -> torch.Tensor:
        """DDIM sampling of ``n`` rows on the strided timesteps; optional label ``y`` for a conditional
        model and classifier guidance towards ``guide_y``.

        ``eta`` = 0 is deterministic DDIM; ``eta`` = 1 with all T steps is ancestral DDPM sampling. Each
        step runs over blocks of ``block`` rows, so the networks' intermediate activations stay in the CPU
        cache (about 1.3 times faster than one pass over all rows at HSB's sizes); rows do not interact,
        so the block size changes the result only by floating-point rounding.
        """
        x = torch.randn((n, dim), generator=gen, device=device)
        ts = self.timesteps(steps)
        lo_t = None if lo is None else torch.as_tensor(lo, device=device)
        hi_t = None if hi is None else torch.as_tensor(hi, device=device)
        guide = classifier is not None and guidance_scale != 0.0 and guide_y is not None
        block = max(1, int(block))
        for i, t in enumerate(ts):
            ab = float(self.abar[t])
            last = i + 1 == len(ts)
            ab_next = 1.0 if last else float(self.abar[ts[i + 1]])
            sigma = eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)) if eta and not last else 0.0
            noise = torch.randn(x.shape, generator=gen, device=device) if sigma else None
            tt = torch.full((1,), int(t), dtype=torch.long, device=device)
            emb = model.embedding(tt, y)
            cemb = classifier.embedding(tt) if guide else None
            for a in range(0, n, block):
                b = min(n, a + block)
                xb = x[a:b]
                eps = model.infer(xb, emb if emb.shape[0] == 1 else emb[a:b])
                if guide:
                    eps -= math.sqrt(1 - ab) * guidance_scale * classifier.log_prob_grad(xb, cemb, guide_y[a:b])
                x0 = (xb - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
                if lo_t is not None:
                    x0 = torch.clamp(x0, lo_t, hi_t)
                    eps = (xb - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
                if last:
                    x[a:b] = x0
                    continue
                xb = math.sqrt(ab_next) * x0 + math.sqrt(max(1 - ab_next - sigma**2, 0.0)) * eps
                if sigma:
                    xb += sigma * noise[a:b]
                x[a:b] = xb
        return x


# ===================================================================== training helpers
@contextmanager
def seeded_init(seed: int):
    """Initialise networks from ``seed`` without touching the caller's global torch RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def train_loop(loss_fn, params, *, steps: int, lr: float, weight_decay: float, desc: str, progress,
               log_every: int = 50) -> list[tuple[int, float]]:
    """AdamW with a linearly decaying learning rate; returns (step, mean loss since last record)."""
    from tqdm import tqdm  # plain text bar: tqdm.auto needs ipywidgets inside notebooks

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    hist, acc, cnt = [], 0.0, 0
    bar = tqdm(range(steps), desc=desc, disable=progress, leave=False, mininterval=0.5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * (1 - step / steps)
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc += float(loss.detach())
        cnt += 1
        if cnt == log_every or step == steps - 1:
            hist.append((step + 1, acc / cnt))
            bar.set_postfix(loss=f"{acc / cnt:.4f}", refresh=False)
            acc, cnt = 0.0, 0
    bar.close()
    return hist
