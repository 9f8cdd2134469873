"""An LLM-style generator: an autoregressive causal transformer over tokenised rows, trained from scratch.

The idea is that of GReaT (Borisov et al. 2023, "Language models are realistic tabular data generators")
and REaLTabFormer (Solatorio & Dupriez 2023, "REaLTabFormer: generating realistic relational and tabular
data using transformers"): a row is a sequence of tokens and a causal (GPT-style) transformer learns
``p(token_k | tokens_<k)``; sampling draws tokens one at a time and decodes them back into a row. For a
relational data set REaLTabFormer generates the parent row first and then its children with a model
conditioned on the parent. This module reimplements those ideas from the papers (no code of theirs is
used) in a few hundred lines of torch, with choices made for two-level data:

**No pretrained weights.** The network is initialised at random and trained on the study's data only.
GReaT fine-tunes a pretrained GPT-2 on rows written as text ("MathAch is 12.3, SES is ..."); here no model
hub is reachable at run time (a study must build from a clean clone without downloads), and a
from-scratch model isolates what the autoregressive factorisation itself contributes, which is the
question the second paper (Khalil et al., *artificial students*) leaves open: whether the LLMs' results
come from the language model's pretraining or from modelling rows token by token.

**Tokeniser** (one token per value, not characters). Each data column owns a slice of one shared
vocabulary (column-specific offsets): a category is one token; a numerical column with at most
``n_bins`` distinct values has one token per value (decoded exactly); any other numerical column is cut
into ``n_bins`` quantile bins of the training values. A bin token is decoded by drawing a quantile level
uniformly within the bin's share of the training data and mapping it through the interpolated empirical
quantile function (a grid of 1,025 quantiles is stored, not the training values): values spread within a
bin as the training values do (drawing uniformly between the bin's edges widened HSB's SES by 15%, its
tail bins being wide), are not copied from training rows except where the data have ties, and
stay inside the observed range; integer columns are rounded. The number of children of a parent row
(the school size) is one more parent column, binned the same way, so sizes come from the school model.

**Hierarchy.** Two networks of the same class. The *school model* generates a school row (its tokens
after a start token). The *student model* generates the students of a school one at a time, with the
school's tokens as a prefix and **the school's previously generated students in the context** (up to
``context_students`` of them, a sliding window). The students of a real school are exchangeable, so a
sequence model of them learns the school-level latent implicitly (de Finetti): the first student is
drawn given the school row, later ones also given their schoolmates, which keeps the within-school
correlation (the ICC) for a *new* school. There is no embedding per real school, which could only copy
real schools. Training windows are random subsets of a school's students in random order (fresh each
step), so every context length from 0 to ``context_students`` is trained.

**Decoding.** At each position the logits are restricted to the slice of the column that comes next
(in training and sampling; ``restrict_logits=False`` switches this off, as in GReaT, where a sampled
token can be invalid for its column). A row with a token outside its column's slice fails to decode; such
rows are counted, never patched: the failed student (or school) is drawn again, and the number of failed
draws is reported in ``last_decode_failures_`` (per table, for the last sample) and
``decode_failures_total_``. With restricted logits failures cannot happen (the count stays 0). Sampling
uses a ``temperature`` (1: the model's distribution) and runs all schools of a sample as one batch.

**Measured** on HSB (160 schools, 7,185 students; ``benchmarks/bench_transformer.py``, one torch thread on
a 2-core machine shared with other jobs, load about 3): at the defaults training takes 459 s (school model
29 s, student model 430 s), sampling 160 schools 5.6 s (a key/value cache: each student costs one pass over
its context and one step per column); no decoding failures. With two threads while other jobs loaded the
2 cores up to 6.6, training took 857 s (oversubscribed) and sampling 2.1 s, with the same fitted model and
samples. The synthetic ICC of MathAch is 0.160 (real
0.174; ICC similarity 0.985) and of SES 0.271 (real 0.267; 0.997), inside the real-vs-real band (two halves
of the real schools: 2.5% quantiles 0.91-0.93). Means and SDs: MathAch 13.30 / 6.86 (real 12.75 / 6.88),
SES 0.05 / 0.77 (real 0.00 / 0.78); mean school size 44.9 (real 44.9). The negative control
(``context_students=0, school_prefix=False``: students independent of their school) gives ICCs of 0.000
and 0.002 (similarity 0.50 and 0.49): the within-school correlation comes from the conditioning.

**The school model memorises when trained long.** It sees only 160 rows. With 300 school epochs (loss
0.78) 83% of the synthetic schools had exactly the token sequence (every bin and category) of a real
school; with the default 100 epochs (loss 1.55) 1.2% had, and the ICCs were no worse (300 epochs: 0.191
and 0.315). ``bench_transformer.py`` reports this share (``school_token_copy_share``); check it when
changing ``school_epochs``, ``n_bins`` or the model size.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import MultilevelData
from ..errors import MlsimkitError
from .base import Generator, as_rng, make_ids, torch_seed, torch_threads

PAD, BOS = 0, 1
_N_SPECIAL = 2
SIZE_COLUMN = "__size__"  # the number of children of a parent row, modelled as a parent column
_GRID = 1025  # empirical quantiles kept per binned column (decoding interpolates between them)


class CausalTransformer(nn.Module):
    """A small GPT-style decoder: token and position embeddings, pre-norm transformer layers with a
    causal mask, a final norm and a linear head over the whole vocabulary."""

    def __init__(self, vocab: int, max_len: int, d_model: int, n_heads: int, n_layers: int,
                 dim_feedforward: int, dropout: float):
        super().__init__()
        self.init_args = dict(vocab=vocab, max_len=max_len, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                              dim_feedforward=dim_feedforward, dropout=dropout)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward, dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, length, vocab)``; position ``t`` predicts token ``t + 1``."""
        L = tokens.shape[1]
        pos = torch.arange(L, device=tokens.device)
        h = self.tok(tokens) + self.pos(pos)[None]
        mask = torch.triu(torch.full((L, L), float("-inf"), device=tokens.device), diagonal=1)
        h = self.layers(h, mask=mask, is_causal=True)
        return self.head(self.norm(h))

    # ---- inference with a key/value cache (sampling): the same computation as forward() in eval mode
    def _cached(self, tokens: torch.Tensor, pos0: int, cache: list | None):
        """Run ``tokens`` (at positions ``pos0 ...``) through the layers, attending to ``cache`` (the keys
        and values of earlier positions) and extending it; returns the last position's logits."""
        B, T = tokens.shape
        h = self.tok(tokens) + self.pos(torch.arange(pos0, pos0 + T, device=tokens.device))[None]
        new = []
        for i, layer in enumerate(self.layers.layers):
            attn = layer.self_attn
            H, d = attn.num_heads, attn.embed_dim
            q, k, v = nn.functional.linear(layer.norm1(h), attn.in_proj_weight, attn.in_proj_bias).split(d, -1)
            q, k, v = (x.reshape(B, T, H, d // H).transpose(1, 2) for x in (q, k, v))
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
            new.append((k, v))
            a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=cache is None and T > 1)
            h = h + attn.out_proj(a.transpose(1, 2).reshape(B, T, d))
            h = h + layer.linear2(layer.activation(layer.linear1(layer.norm2(h))))
        return self.head(self.norm(h[:, -1])), new

    def prefill(self, tokens: torch.Tensor):
        """Logits of the token after ``tokens`` and the cache of their keys and values."""
        return self._cached(tokens, 0, None)

    def step(self, token: torch.Tensor, pos: int, cache: list):
        """Logits of the token after ``token`` (at position ``pos``), given the cache of positions < pos."""
        return self._cached(token[:, None], pos, cache)


# ============================================================================ tokeniser
def _column_spec(name: str, values: np.ndarray, col, n_bins: int, offset: int) -> dict:
    """How one column maps to tokens (see the module docstring)."""
    if col is not None and col.is_category:
        return dict(name=name, kind="category", offset=offset, n=len(col.levels), levels=list(col.levels),
                    ordered=col.kind == "ordinal")
    x = values.astype(float)
    integer = bool(col is None or col.integer)
    uniq = np.unique(x)
    if len(uniq) <= n_bins:
        return dict(name=name, kind="discrete", offset=offset, n=len(uniq), values=uniq, integer=integer)
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    codes = np.searchsorted(edges[1:-1], x, side="right")
    # share of the training values below each bin, and a fine grid of empirical quantiles for decoding
    cum = np.concatenate([[0.0], np.cumsum(np.bincount(codes, minlength=len(edges) - 1)) / len(x)])
    grid = np.quantile(x, np.linspace(0, 1, _GRID))
    return dict(name=name, kind="binned", offset=offset, n=len(edges) - 1, edges=edges, integer=integer,
                cum=cum, grid=grid)


def _encode(spec: dict, values) -> np.ndarray:
    if spec["kind"] == "category":
        codes = np.asarray(pd.Categorical(values, categories=spec["levels"]).codes, dtype=np.int64)
    elif spec["kind"] == "discrete":
        codes = np.searchsorted(spec["values"], np.asarray(values, dtype=float))
    else:
        codes = np.searchsorted(spec["edges"][1:-1], np.asarray(values, dtype=float), side="right")
    return codes.astype(np.int64) + spec["offset"]


def _decode(spec: dict, tokens: np.ndarray, rng: np.random.Generator):
    """Values of a column from valid tokens (the caller has checked they lie in the column's slice)."""
    codes = tokens - spec["offset"]
    if spec["kind"] == "category":
        return pd.Categorical.from_codes(codes, categories=spec["levels"], ordered=spec["ordered"])
    if spec["kind"] == "discrete":
        return spec["values"][codes].astype(float)
    e, cum = spec["edges"], spec["cum"]
    # a quantile level drawn uniformly within the bin's share, mapped through the interpolated empirical
    # quantile function: the bin's values are spread as in the training data (uniform between the edges
    # would widen the sparse tail bins), yet no training value is copied
    u = cum[codes] + rng.random(len(codes)) * (cum[codes + 1] - cum[codes])
    x = np.interp(u, np.linspace(0, 1, len(spec["grid"])), spec["grid"])
    x = np.clip(x, e[codes], e[codes + 1])
    if spec["integer"]:
        x = np.round(x)
    return np.clip(x, e[0], e[-1]).astype(float)


class TabularTransformerGenerator(Generator):
    """Autoregressive causal transformer over tokenised rows, schools first, then their students (see the
    module docstring).

    Parameters
    ----------
    epochs : int
        Training epochs of the student model. One epoch is as many training windows as there are students;
        a window holds up to ``context_students + 1`` students of one school, each of whose tokens is
        predicted, so an epoch predicts every student's tokens about that many times.
    school_epochs : int
        Training epochs of the school model (one epoch: as many rows as there are schools; cheap). Long
        training memorises the real schools (see "The school model memorises" in the module docstring).
    n_layers, d_model, n_heads : int
        Transformer layers (2-4), width and attention heads (``d_model`` divisible by ``n_heads``).
    dim_feedforward : int or None
        Width of the feed-forward layers (default ``4 * d_model``).
    dropout : float
    n_bins : int
        Quantile bins per numerical column (columns with at most this many distinct values get one token
        per value).
    context_students : int
        Previously generated students of the same school in the context (0: students independent given
        the school row).
    school_prefix : bool
        Condition students on their school's tokens (default). With ``school_prefix=False`` and
        ``context_students=0`` the students are independent of their school: the negative control that
        loses the ICC.
    temperature : float
        Sampling temperature (> 0; 1 samples the model's distribution, < 1 sharpens it).
    restrict_logits : bool
        Restrict each position's logits to the next column's tokens (default; decoding failures are then
        impossible). ``False`` samples from the whole vocabulary, as a text model would; invalid rows are
        counted and drawn again.
    lr, weight_decay : float
        AdamW (learning rate linearly decayed to 0); gradients clipped at norm 1.
    batch_size : int
        Windows (student model) or rows (school model) per step.
    random_state : int
        Seed of training.
    n_threads : int or None
        Torch CPU threads during fit and sample, restored afterwards (None: torch's setting).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    verbose : bool
        Show progress bars and print a training summary.

    Measured on HSB at the defaults: see the module docstring (training about 8 minutes on one busy CPU
    core, sampling 160 schools in about 5 s, ICCs inside the real-vs-real band).
    """

    name = "tabular-transformer"

    def __init__(
        self,
        epochs: int = 12,
        n_layers: int = 3,
        d_model: int = 64,
        n_heads: int = 4,
        context_students: int = 8,
        temperature: float = 1.0,
        *,
        school_epochs: int = 100,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
        n_bins: int = 32,
        school_prefix: bool = True,
        restrict_logits: bool = True,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        batch_size: int = 256,
        random_state: int = 0,
        n_threads: int | None = None,
        device: str = "auto",
        verbose: bool = False,
    ):
        self.epochs = epochs
        self.n_layers = n_layers
        self.d_model = d_model
        self.n_heads = n_heads
        self.context_students = context_students
        self.temperature = temperature
        self.school_epochs = school_epochs
        self.dim_feedforward = dim_feedforward
        self.dropout = dropout
        self.n_bins = n_bins
        self.school_prefix = school_prefix
        self.restrict_logits = restrict_logits
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.random_state = random_state
        self.n_threads = n_threads
        self.device = device
        self.verbose = verbose

    @classmethod
    def quick(cls, **overrides) -> "TabularTransformerGenerator":
        """Small, short settings for tests and smoke runs (seconds on a small data set)."""
        kw = dict(epochs=4, school_epochs=60, n_layers=2, d_model=32, n_heads=2, context_students=4, n_bins=16,
                  batch_size=128, lr=3e-3, device="cpu")
        return cls(**{**kw, **overrides})

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        def pos_int(name, v, lo=1, allow_none=False):
            if allow_none and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise MlsimkitError(f"generator 'tabular-transformer', parameter '{name}': expected an integer "
                                    f">= {lo}, got {v!r}")

        for name in ("epochs", "school_epochs", "n_layers", "d_model", "n_heads", "batch_size"):
            pos_int(name, getattr(self, name))
        pos_int("dim_feedforward", self.dim_feedforward, allow_none=True)
        pos_int("n_bins", self.n_bins, lo=2)
        pos_int("context_students", self.context_students, lo=0)
        if self.d_model % self.n_heads:
            raise MlsimkitError(f"generator 'tabular-transformer', parameter 'n_heads': must divide d_model "
                                f"({self.d_model}), got {self.n_heads}")
        for name in ("temperature", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise MlsimkitError(f"generator 'tabular-transformer', parameter '{name}': expected a positive "
                                    f"number, got {v!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise MlsimkitError(f"generator 'tabular-transformer', parameter 'dropout': expected a number in "
                                f"[0, 1), got {self.dropout!r}")
        for name in ("school_prefix", "restrict_logits"):
            if not isinstance(getattr(self, name), bool):
                raise MlsimkitError(f"generator 'tabular-transformer', parameter '{name}': expected true or "
                                    f"false, got {getattr(self, name)!r}")

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    # ------------------------------------------------------------------ layout
    def _student_layout(self):
        """Start of the student tokens in a window, and the window length."""
        P = len(self.school_cols_) if self.school_prefix else 0
        S = len(self.student_cols_)
        return 1 + P, 1 + P + (int(self.context_students) + 1) * S

    def _allowed(self, cols: list[dict], start: int, length: int, period: int) -> np.ndarray:
        """(length - 1, vocab) bool: the tokens position ``t`` may predict (those of column ``t + 1``)."""
        allowed = np.zeros((length - 1, self.vocab_), dtype=bool)
        for t in range(start, length):
            spec = cols[(t - start) % period]
            allowed[t - 1, spec["offset"]:spec["offset"] + spec["n"]] = True
        if not self.restrict_logits:
            allowed[:, _N_SPECIAL:] = True
        return allowed

    def _net(self, max_len: int) -> CausalTransformer:
        d = int(self.d_model)
        return CausalTransformer(self.vocab_, max_len, d, int(self.n_heads), int(self.n_layers),
                                 int(self.dim_feedforward or 4 * d), float(self.dropout))

    # ------------------------------------------------------------------ fit
    def fit(self, data: MultilevelData) -> "TabularTransformerGenerator":
        """Tokenise the two tables and train the school and the student model."""
        self._check_params()
        device = self._device()
        # dropout draws from torch's global generator: seeded here, the caller's state restored afterwards
        with torch_threads(self.n_threads), torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(self.random_state))
            return self._fit(data)

    def _fit(self, data: MultilevelData) -> "TabularTransformerGenerator":
        if not isinstance(data, MultilevelData):
            raise MlsimkitError(f"fit(data): expected a MultilevelData, got {type(data).__name__}")
        if len(data.levels) != 2:
            raise MlsimkitError(
                f"data set '{data.schema.name}': the tabular-transformer generator models two levels (a parent "
                f"and a child table); this one has {len(data.levels)} ({' > '.join(data.levels)})")
        t0 = time.perf_counter()
        device = self._device()
        schema = data.schema
        pname, cname = schema.levels
        ptab, ctab = schema.tables[pname], schema.tables[cname]
        pk, fk = ptab.primary_key[0], ctab.foreign_key
        parent, child = data[pname], data[cname]
        if not ctab.data_columns:
            raise MlsimkitError(f"table '{cname}': has no variables to model (only keys)")
        sizes = data.cluster_sizes().reindex(parent[pk]).to_numpy(dtype=np.int64)

        # ---- tokeniser: one vocabulary, a slice per column (school columns, the size, student columns)
        offset, cols = _N_SPECIAL, []
        for c in ptab.data_columns:
            cols.append(_column_spec(c, parent[c].to_numpy(), ptab.columns[c], int(self.n_bins), offset))
            offset += cols[-1]["n"]
        cols.append(_column_spec(SIZE_COLUMN, sizes, None, int(self.n_bins), offset))
        offset += cols[-1]["n"]
        self.school_cols_ = cols
        scols = []
        for c in ctab.data_columns:
            scols.append(_column_spec(c, child[c].to_numpy(), ctab.columns[c], int(self.n_bins), offset))
            offset += scols[-1]["n"]
        self.student_cols_ = scols
        self.vocab_ = offset
        P, S, C = len(cols), len(scols), int(self.context_students)

        ptok = np.stack([_encode(s, parent[s["name"]] if s["name"] != SIZE_COLUMN else sizes) for s in cols], 1)
        ctok = np.stack([_encode(s, child[s["name"]]) for s in scols], 1)
        # students of each school as a padded index matrix (J, max size), -1 = none
        ppos = pd.Index(parent[pk]).get_indexer(child[fk])
        order = np.argsort(ppos, kind="stable")
        J, m = len(parent), int(sizes.max())
        members = np.full((J, m), -1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for j in range(J):
            members[j, :sizes[j]] = order[starts[j]:starts[j + 1]]

        rs = int(self.random_state)
        school_net = self._net(1 + P).to(device)  # initialised from the seeded global generator (see fit)
        student_net = self._net(self._student_layout()[1]).to(device)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(rs)
        progress = False if self.verbose else None
        hist, times = [], {}

        # ---- school model: [BOS] school tokens (incl. size); loss on every school token
        s_tokens = torch.as_tensor(np.hstack([np.full((J, 1), BOS), ptok]), device=device)
        s_allowed = torch.as_tensor(self._allowed(cols, 1, 1 + P, P), device=device)
        bs_school = min(int(self.batch_size), J)

        def school_batch():
            i = torch.randint(0, J, (bs_school,), generator=gen).to(device)
            return s_tokens[i]

        ts = time.perf_counter()
        steps = int(self.school_epochs) * math.ceil(J / bs_school)
        hist += [("school", s, v) for s, v in self._train(school_net, school_batch, s_allowed, 1, steps,
                                                             "school", progress)]
        times["school"] = time.perf_counter() - ts

        # ---- student model: [BOS] (school tokens) then up to C + 1 students of one school, random order
        start, length = self._student_layout()
        c_allowed = torch.as_tensor(self._allowed(scols, start, length, S), device=device)
        members_t = torch.as_tensor(members)
        sizes_t = torch.as_tensor(sizes)
        weights = sizes_t.double()  # a school as often as it has students
        ctok_t = torch.as_tensor(np.vstack([ctok, np.full((1, S), PAD)]))  # row -1: padding
        ptok_t = torch.as_tensor(ptok)
        bs = int(self.batch_size)

        def student_batch():
            j = torch.multinomial(weights, bs, replacement=True, generator=gen)
            keys = torch.rand((bs, m), generator=gen)
            keys[members_t[j] < 0] = 2.0  # padding slots sort last
            idx = torch.gather(members_t[j], 1, keys.argsort(1)[:, :C + 1])  # (bs, C+1), -1 = none
            body = ctok_t[idx].reshape(bs, (C + 1) * S)
            parts = [torch.full((bs, 1), BOS, dtype=torch.long)]
            if self.school_prefix:
                parts.append(ptok_t[j])
            return torch.cat(parts + [body], 1).to(device)

        ts = time.perf_counter()
        steps = int(self.epochs) * math.ceil(len(child) / bs)
        hist += [("student", s, v) for s, v in self._train(student_net, student_batch, c_allowed, start, steps,
                                                              "student", progress)]
        times["student"] = time.perf_counter() - ts

        for net in (school_net, student_net):
            net.to("cpu").eval()
            for p in net.parameters():
                p.requires_grad_(False)
        self.school_model_, self.student_model_ = school_net, student_net
        self.school_allowed_ = s_allowed.cpu().numpy()
        self.student_allowed_ = c_allowed.cpu().numpy()
        self.history_ = pd.DataFrame(hist, columns=["model", "step", "loss"])
        self.decode_failures_total_ = 0
        self.last_decode_failures_ = {pname: 0, cname: 0}
        self.schema_ = schema
        self.fit_seconds_ = time.perf_counter() - t0
        self.fit_seconds_by_model_ = times
        if self.verbose:
            print(f"tabular-transformer: vocabulary {self.vocab_} tokens; trained in {self.fit_seconds_:.1f} s "
                  f"({', '.join(f'{k} {v:.1f} s' for k, v in times.items())})", file=sys.stderr)
        return self

    def _train(self, net, batch_fn, allowed, start, steps, label, progress) -> list[tuple[int, float]]:
        """AdamW with linear decay; cross-entropy on the tokens from position ``start`` on (PAD excluded),
        logits restricted to ``allowed``."""
        from tqdm import tqdm

        opt = torch.optim.AdamW(net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        bias = torch.where(allowed, 0.0, float("-inf"))[start - 1:]
        net.train()
        out, acc, cnt = [], 0.0, 0
        bar = tqdm(range(steps), desc=f"tabular-transformer {label}", disable=progress, leave=False, mininterval=0.5)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = float(self.lr) * (1 - step / steps)
            tokens = batch_fn()
            logits = net(tokens[:, :-1])[:, start - 1:] + bias
            target = tokens[:, start:]
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               ignore_index=PAD)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            acc += float(loss.detach())
            cnt += 1
            if cnt == 50 or step == steps - 1:
                out.append((step + 1, acc / cnt))
                bar.set_postfix(loss=f"{acc / cnt:.4f}", refresh=False)
                acc, cnt = 0.0, 0
        bar.close()
        net.eval()
        return out

    # ------------------------------------------------------------------ sample
    def sample(self, n_clusters: int, *, seed: Any) -> MultilevelData:
        """Sample ``n_clusters`` schools and their students; the same seed gives the same data."""
        self._check_fitted()
        self._check_params()
        with torch_threads(self.n_threads), torch.inference_mode():
            return self._sample(n_clusters, seed)

    def _draw_row(self, net, window, pos0, cols, allowed, gen, table, failures):
        """Generate the tokens of one row (columns ``cols``) at positions ``pos0 ...`` for every row of
        ``window`` (in place); a row with a token outside its column's slice is counted and drawn again."""
        todo = torch.arange(window.shape[0], device=window.device)
        for attempt in range(100):
            logits, cache = net.prefill(window[todo, :pos0])
            for k in range(len(cols)):
                p = pos0 + k
                logits = (logits / float(self.temperature)).masked_fill(~allowed[p - 1], float("-inf"))
                tok = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen)[:, 0]
                window[todo, p] = tok
                if k + 1 < len(cols):
                    logits, cache = net.step(tok, p, cache)
            got = window[todo, pos0:pos0 + len(cols)]
            lo = torch.as_tensor([c["offset"] for c in cols], device=window.device)
            hi = lo + torch.as_tensor([c["n"] for c in cols], device=window.device)
            bad = ((got < lo) | (got >= hi)).any(1)
            nbad = int(bad.sum())
            if nbad == 0:
                return
            failures[table] += nbad
            todo = todo[bad]
        raise MlsimkitError(f"generator 'tabular-transformer': {failures[table]} rows of table '{table}' failed "
                            "to decode and 100 redraws did not give valid rows; train longer or set "
                            "restrict_logits: true")

    def _sample(self, n_clusters: int, seed: Any) -> MultilevelData:
        n = self._check_n_clusters(n_clusters)
        rng = as_rng(seed)
        device = self._device()
        gen = torch.Generator(device=device)
        gen.manual_seed(torch_seed(rng))
        schema = self.schema_
        pname, cname = schema.levels
        ptab, ctab = schema.tables[pname], schema.tables[cname]
        school_net, student_net = self.school_model_.to(device), self.student_model_.to(device)
        cols, scols = self.school_cols_, self.student_cols_
        P, S, C = len(cols), len(scols), int(self.context_students)
        failures = {pname: 0, cname: 0}

        # ---- schools (their size is the last school column)
        sw = torch.full((n, 1 + P), BOS, dtype=torch.long, device=device)
        s_allowed = torch.as_tensor(self.school_allowed_, device=device)
        self._draw_row(school_net, sw, 1, cols, s_allowed, gen, pname, failures)
        ptok = sw[:, 1:].cpu().numpy()
        pvals = {s["name"]: _decode(s, ptok[:, i], rng) for i, s in enumerate(cols)}
        sizes = np.maximum(pvals.pop(SIZE_COLUMN).astype(np.int64), 1)

        # ---- students: one at a time per school, all schools in one batch, a sliding window of C students
        start, length = self._student_layout()
        c_allowed = torch.as_tensor(self.student_allowed_, device=device)
        window = torch.full((n, length), PAD, dtype=torch.long, device=device)
        window[:, 0] = BOS
        if self.school_prefix:
            window[:, 1:start] = sw[:, 1:]
        sizes_t = torch.as_tensor(sizes, device=device)
        out = torch.empty((n, int(sizes.max()), S), dtype=torch.long)
        for i in range(int(sizes.max())):
            active = torch.nonzero(sizes_t > i)[:, 0]
            slot = min(i, C)
            if i > C:  # slide: drop the oldest student of the window
                window[:, start:start + C * S] = window[:, start + S:start + (C + 1) * S].clone()
            sub = window[active, :start + (slot + 1) * S]
            self._draw_row(student_net, sub, start + slot * S, scols, c_allowed, gen, cname, failures)
            window[active, :start + (slot + 1) * S] = sub
            out[active.cpu(), i] = sub[:, start + slot * S:].cpu()
        keep = np.arange(out.shape[1])[None, :] < sizes[:, None]
        ctok = out.numpy()[keep]  # (N, S), schools in order, students in generation order

        self.last_decode_failures_ = failures
        self.decode_failures_total_ = int(getattr(self, "decode_failures_total_", 0)) + sum(failures.values())
        N = int(sizes.sum())
        pk, fk = ptab.primary_key[0], ctab.foreign_key
        school_ids = make_ids(pname, n)
        pframe = {}
        for c in ptab.columns:
            pframe[c] = school_ids if c == pk else (make_ids(f"{pname}-{c}-", n) if c in ptab.key_columns
                                                     else pvals[c])
        cvals = {s["name"]: _decode(s, ctok[:, i], rng) for i, s in enumerate(scols)}
        cframe = {}
        for c in ctab.columns:
            if c == fk:
                cframe[c] = np.repeat(school_ids, sizes)
            elif c in ctab.key_columns:
                cframe[c] = make_ids(cname if len(ctab.key_columns) == 2 else f"{cname}-{c}-", N)
            else:
                cframe[c] = cvals[c]
        return MultilevelData(schema, {pname: pd.DataFrame(pframe), cname: pd.DataFrame(cframe)}, validate=False)
