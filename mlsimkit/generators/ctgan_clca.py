"""CTGAN on the join-as-one table with cluster-level consistency alignment (section 3.3.2).

Training
--------
CTGAN (the ``ctgan`` package, WGAN-GP with mode-specific normalisation and training-by-sampling) learns
the join-as-one table: one row per student carrying the school's variables *and the school key* as a
discrete column (the paper treats SCH_ID as categorical). Unit keys are dropped. The generator and
discriminator architecture and learning rates default to the paper's (two hidden layers of 256 units,
learning rates 2e-4, batch 500, embedding 128); the number of epochs defaults to 30 so that HSB trains
in about three minutes on two busy CPU cores (about 30 s of data transformation, then about 4 s per
epoch single-threaded). :meth:`CTGANGenerator.paper` gives the paper's 1600 epochs.
The loss history is ``history_`` (epoch, generator_loss, discriminator_loss).

How synthetic schools and their sizes are formed
------------------------------------------------
CTGAN knows nothing about schools, so we form them from the school-key column. For ``n_clusters``
synthetic schools we draw real school labels *balanced*: every real label once per full cycle of
``J_real`` schools (``n_clusters // J_real`` cycles) and the remaining ``n_clusters % J_real`` labels drawn
without replacement. Synthetic school ``j`` with label ``l`` gets ``n_j`` students, the real size of school
``l`` (so the synthetic size distribution is the real one; ``cluster_size=m`` fixes every size to ``m``),
and its ``n_j`` rows are generated with CTGAN's conditional vector set to ``school = l``. The condition
shapes the rows (CTGAN was trained with it) but is not a hard constraint: the generated school column
is discarded and the cluster is the one we conditioned on. How much the condition shapes the rows is
measured, not assumed: :meth:`CTGANGenerator.conditioning_report` gives the share of generated rows whose
school column equals the condition and the correlations between a synthetic school's means and its
label's real values; Stage 3 shows them at the study's settings. Measured on HSB: at 10 epochs the match
rate was 0.9% (chance: 1/160 = 0.6%); at the default 50 epochs it is 5.7%, and the synthetic school means
correlate 0.08 (SES) and 0.17 (MathAch) with the label's real school means, and -0.13 to 0.09 for the
school variables before alignment. So at these settings the condition barely shapes the rows: a
synthetic school's students are close to a draw from the whole population, its school variables come
from CLCA, and CTGAN's ICCs are far below the real ones (Stage 3: ICC similarity 0.55-0.65 against about
0.98 for two halves of the real schools). The paper's 1,600 epochs (``paper`` profile) may do better;
this was not measured here. The school-level variables of the generated rows still vary within a synthetic school;
alignment makes them constant:

* ``alignment="clca"`` (default): :mod:`mlsimkit.clca` (quantile matching for numerical, eq. (4) with
  CP-SAT for categorical school-level variables), against the real school-level distribution;
* ``alignment="naive"``: the within-school mean (rounded for declared integers) or mode;
* ``alignment="none"``: no post-processing: each school keeps the values of its first generated row.

Note on disclosure: quantile matching maps synthetic schools onto real school-level *values* (with
``n_clusters = J_real`` the synthetic values of a numerical school variable are a permutation of the real
ones, as in the paper's Algorithm 1); the real school-level columns are stored in the fitted model.
Only the pairing of values with students and with other school variables is synthetic.

With ``n_clusters = J_real`` this is the paper's set-up (every real label appears once) except that the
paper sampled ``N`` unconditioned rows and grouped them by the generated label; conditioning lets us
generate any number of schools with a controlled size distribution. :meth:`CTGANGenerator.sample_raw`
returns the unaligned rows, and :meth:`CTGANGenerator.sample_with_report` the alignment diagnostics.

Randomness
----------
``random_state`` seeds training. ``sample(n, seed=s)`` draws labels and sizes from a numpy Generator
and seeds torch's and numpy's global generators (used inside ``ctgan``) within a context that restores
their previous state, so the same seed gives the same sample and the caller's global state is untouched.
CP-SAT runs single-threaded under a deterministic time limit. Sampling runs the CTGAN generator in
training mode on mixed batches of ``batch_size`` rows, as ``ctgan`` does (its batch-norm layers use
batch statistics); the generator's weights and batch-norm buffers are restored after sampling.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import joblib
import numpy as np
import pandas as pd

from .. import clca
from ..data import MultilevelData
from ..errors import MlsimkitError
from ._assemble import assemble, codes_of, finish_numeric, two_level
from .base import Generator, as_rng, torch_device, torch_seed, torch_threads

ALIGNMENTS = ("clca", "naive", "none")


@contextlib.contextmanager
def seeded_global_rngs(seed: int, device=None):
    """Seed torch's and numpy's global generators (and ``device``'s, a CUDA device) inside the block;
    restore their state afterwards."""
    import torch

    np_state = np.random.get_state()
    cuda = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


class CTGANGenerator(Generator):
    """CTGAN on the join-as-one table + cluster-level consistency alignment (see the module docstring).

    Parameters
    ----------
    epochs : int
        Training epochs (paper: 1600; default 30 keeps HSB to minutes on 2 CPU cores).
    batch_size : int
        Rows per batch (a multiple of ``pac``; paper / ctgan default 500).
    alignment : {"clca", "naive", "none"}
        Post-processing of school-level variables.
    cluster_size : int or None
        None: each synthetic school has the real size of the school label it is conditioned on;
        an int: every school has that many students.
    weights : (w1, w2, w3)
        Weights of eq. (4) (paper: all 1).
    time_limit : float
        CP-SAT deterministic time limit per categorical variable (about seconds).
    embedding_dim, generator_dim, discriminator_dim, generator_lr, discriminator_lr, generator_decay,
    discriminator_decay, discriminator_steps, pac, log_frequency :
        Passed to ``ctgan.CTGAN``.
    random_state : int
        Seed of training.
    n_threads : int or None
        Torch (and BLAS) CPU threads during fit and sample, restored afterwards; None leaves torch's
        setting. Default 1: CTGAN's small networks gain little from threads, and on a shared 2-core
        machine two threads were 15x slower per epoch than one (64 s vs 4.3 s on HSB).
    device : str
        ``"auto"`` (default: CUDA when torch sees a GPU, else the CPU), ``"cpu"`` or ``"cuda[:k]"``: where
        the networks train and sample. The trained model is stored on the CPU, so a model trained on a GPU
        samples on a machine without one. The same seed gives the same model and samples on the same
        device; a GPU's random streams and rounding differ from the CPU's, so results do not carry across.
    verbose : bool
        Show ctgan's progress bar.
    """

    name = "ctgan"

    def __init__(
        self,
        epochs: int = 30,
        batch_size: int = 500,
        alignment: str = "clca",
        *,
        cluster_size: int | None = None,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        time_limit: float = 10.0,
        embedding_dim: int = 128,
        generator_dim: tuple[int, ...] = (256, 256),
        discriminator_dim: tuple[int, ...] = (256, 256),
        generator_lr: float = 2e-4,
        discriminator_lr: float = 2e-4,
        generator_decay: float = 1e-6,
        discriminator_decay: float = 1e-6,
        discriminator_steps: int = 1,
        pac: int = 10,
        log_frequency: bool = True,
        random_state: int = 0,
        n_threads: int | None = 1,
        device: str = "auto",
        verbose: bool = False,
    ):
        self.epochs = epochs
        self.batch_size = batch_size
        self.alignment = alignment
        self.cluster_size = cluster_size
        self.weights = tuple(weights)
        self.time_limit = time_limit
        self.embedding_dim = embedding_dim
        self.generator_dim = tuple(generator_dim)
        self.discriminator_dim = tuple(discriminator_dim)
        self.generator_lr = generator_lr
        self.discriminator_lr = discriminator_lr
        self.generator_decay = generator_decay
        self.discriminator_decay = discriminator_decay
        self.discriminator_steps = discriminator_steps
        self.pac = pac
        self.log_frequency = log_frequency
        self.random_state = random_state
        self.n_threads = n_threads
        self.device = device
        self.verbose = verbose

    @classmethod
    def paper(cls, **overrides) -> "CTGANGenerator":
        """The paper's settings (section 4.2): 1600 epochs, everything else ctgan's defaults."""
        return cls(**{"epochs": 1600, **overrides})

    # ------------------------------------------------------------------ checks
    def _check_settings(self) -> None:
        if self.alignment not in ALIGNMENTS:
            raise MlsimkitError(f"generator 'ctgan', parameter 'alignment': expected one of {ALIGNMENTS}, "
                                f"got {self.alignment!r}")
        for p in ("epochs", "batch_size", "pac"):
            v = getattr(self, p)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise MlsimkitError(f"generator 'ctgan', parameter '{p}': expected a positive integer, got {v!r}")
        if self.batch_size % self.pac or self.batch_size % 2:
            raise MlsimkitError(f"generator 'ctgan', parameter 'batch_size': must be even and a multiple of "
                                f"pac={self.pac}, got {self.batch_size}")
        if self.cluster_size is not None and (isinstance(self.cluster_size, bool) or not isinstance(
                self.cluster_size, (int, np.integer)) or self.cluster_size < 1):
            raise MlsimkitError(f"generator 'ctgan', parameter 'cluster_size': expected None or a positive "
                                f"integer, got {self.cluster_size!r}")
        torch_device(getattr(self, "device", "auto"), self.name)

    # ------------------------------------------------------------------ fit
    def fit(self, data: MultilevelData) -> "CTGANGenerator":
        """Train CTGAN on ``data``'s join-as-one table and store the real school-level targets of CLCA."""
        import torch
        from ctgan import CTGAN

        self._check_settings()
        device = torch_device(self.device, self.name)  # checked above
        schema = data.schema
        lay = two_level(schema, self.name)
        joined = data.join_as_one()
        cols = [lay.key, *lay.child_vars, *lay.parent_vars]
        train = pd.DataFrame(index=joined.index)
        discrete = []
        for c in cols:
            kind = "id" if c == lay.key else schema.column(c).kind
            if kind == "numerical":
                train[c] = joined[c].astype(float)
            else:
                train[c] = joined[c].astype(str)
                discrete.append(c)
        model = CTGAN(
            embedding_dim=self.embedding_dim, generator_dim=self.generator_dim,
            discriminator_dim=self.discriminator_dim, generator_lr=self.generator_lr,
            generator_decay=self.generator_decay, discriminator_lr=self.discriminator_lr,
            discriminator_decay=self.discriminator_decay, batch_size=self.batch_size,
            discriminator_steps=self.discriminator_steps, log_frequency=self.log_frequency,
            verbose=self.verbose, epochs=self.epochs, pac=self.pac, enable_gpu=device.type == "cuda",
        )
        model.set_device(device)
        t0 = time.perf_counter()
        with seeded_global_rngs(int(self.random_state), device), warnings.catch_warnings(), \
                joblib.parallel_config(backend="sequential"), torch_threads(self.n_threads):
            # ctgan initialises its networks, and rdt fits and applies its mode-specific normalisation
            # (Bayesian Gaussian mixtures, random mode assignment), from the global generators: seeded here,
            # and the per-column transforms run sequentially (parallel workers would race for the shared
            # generator), so the same random_state gives the same model
            warnings.simplefilter("ignore")
            model.set_random_state(int(self.random_state))
            model.fit(train, discrete)
        model.random_states = None  # sampling seeds the global generators itself
        model.set_device(torch.device("cpu"))  # stored on the CPU; _generate moves it where it samples
        self.fit_time_ = time.perf_counter() - t0
        lv = model.loss_values
        self.history_ = pd.DataFrame({
            "epoch": lv["Epoch"].astype(int).to_numpy(),
            "generator_loss": lv["Generator Loss"].astype(float).to_numpy(),
            "discriminator_loss": lv["Discriminator Loss"].astype(float).to_numpy(),
        })
        self.model_ = model
        self.layout_ = lay
        self.columns_ = cols
        parent = data.parent
        self.labels_ = parent[lay.key].astype(str).to_numpy()
        sizes = data.cluster_sizes()
        sizes.index = sizes.index.astype(str)
        self.label_sizes_ = sizes.reindex(self.labels_).to_numpy(dtype=np.int64)
        # real school-level targets of CLCA
        self.real_parent_ = {}
        for c in lay.parent_vars:
            col = schema.column(c)
            if col.kind == "numerical":
                self.real_parent_[c] = parent[c].to_numpy(dtype=float)
            else:
                K = len(col.levels)
                school_codes = codes_of(parent[c], col)
                student_codes = codes_of(joined[c], col)
                self.real_parent_[c] = {
                    "p": np.bincount(student_codes, minlength=K) / len(student_codes),
                    "m": np.bincount(school_codes, minlength=K).astype(float),
                }
        # position of each school label in CTGAN's conditional vector
        tr, ds = model._transformer, model._data_sampler
        self.cond_index_ = np.empty(len(self.labels_), dtype=np.int64)
        for i, lab in enumerate(self.labels_):
            info = tr.convert_column_name_value_to_id(lay.key, lab)
            self.cond_index_[i] = ds._discrete_column_cond_st[info["discrete_column_id"]] + info["value_id"]
        self.cond_dim_ = ds.dim_cond_vec()
        self.schema_ = schema
        return self

    # ------------------------------------------------------------------ sampling
    def _draw_clusters(self, n_clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        J = len(self.labels_)
        idx = np.concatenate([np.tile(np.arange(J), n_clusters // J),
                              rng.choice(J, n_clusters % J, replace=False)])
        idx = rng.permutation(idx)
        if self.cluster_size is None:
            sizes = self.label_sizes_[idx]
        else:
            sizes = np.full(n_clusters, int(self.cluster_size), dtype=np.int64)
        return idx, sizes

    def _generate(self, label_idx_rows: np.ndarray, rng: np.random.Generator, *, keep_key: bool = True) -> pd.DataFrame:
        """CTGAN rows conditioned row by row on the given school labels (in the given order); without
        the generated school column when ``keep_key`` is False (see :func:`_inverse_transform`)."""
        import torch

        model = self.model_
        n = label_idx_rows.size
        bs = self.batch_size
        n_pad = (-n) % bs
        order = rng.permutation(n)  # mix conditions within batches, as in training
        pad = rng.integers(0, len(self.labels_), n_pad)
        cond_rows = np.concatenate([label_idx_rows[order], pad])
        seed = torch_seed(rng)
        device = torch_device(getattr(self, "device", "auto"), self.name)
        gen = self._generator_on(device)
        saved = {k: v.clone() for k, v in gen.state_dict().items()}
        out = np.empty((cond_rows.size, model._transformer.output_dimensions), dtype=np.float32)
        cond_index = torch.from_numpy(self.cond_index_).to(device)
        try:
            with seeded_global_rngs(seed, device), torch.no_grad(), \
                    torch_threads(getattr(self, "n_threads", None)):
                gen.train()
                for start in range(0, cond_rows.size, bs):
                    rows = torch.from_numpy(cond_rows[start:start + bs]).to(device)
                    c = torch.zeros(bs, self.cond_dim_, device=device)
                    c[torch.arange(bs, device=device), cond_index[rows]] = 1.0
                    z = torch.normal(mean=torch.zeros(bs, self.embedding_dim, device=device), std=1.0)
                    fake = gen(torch.cat([z, c], dim=1))
                    out[start:start + bs] = model._apply_activate(fake).cpu().numpy()
                raw = _inverse_transform(model._transformer, out[:n], None if keep_key else self.layout_.key)
        finally:
            gen.load_state_dict(saved)
        back = np.empty(n, dtype=np.int64)
        back[order] = np.arange(n)
        return raw.iloc[back].reset_index(drop=True)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_on_device", None)
        return state

    def _generator_on(self, device):
        """CTGAN's generator network on ``device``: the stored one, or a copy kept for the process. (The
        ``ctgan`` package moves a loaded model to the GPU where it sees one, so the CPU case moves it back.)"""
        if device.type == "cpu":
            return self.model_._generator.to(device)
        cache = getattr(self, "_on_device", None)
        if cache is None or cache[0] != device:
            import copy
            self._on_device = cache = (device, copy.deepcopy(self.model_._generator).to(device))
        return cache[1]

    def sample_raw(self, n_clusters: int, *, seed: Any) -> pd.DataFrame:
        """Unaligned CTGAN rows: the join-as-one columns plus ``_cluster`` (0..n_clusters-1) and ``_label``
        (the real school label conditioned on). School-level variables may vary within a cluster."""
        self._check_fitted()
        n_clusters = self._check_n_clusters(n_clusters)
        rng = as_rng(seed)
        idx, sizes = self._draw_clusters(n_clusters, rng)
        rows_label = np.repeat(idx, sizes)
        raw = self._generate(rows_label, rng, keep_key=False)
        raw["_cluster"] = np.repeat(np.arange(n_clusters), sizes)
        raw["_label"] = self.labels_[rows_label]
        return raw

    def sample_with_report(self, n_clusters: int, *, seed: Any,
                           alignment: str | None = None) -> tuple[MultilevelData, pd.DataFrame]:
        """A sample and its alignment report: one row per school-level variable with the method, CP-SAT
        status, fallback flag, objective, solve time and the share of synthetic schools whose generated
        rows disagreed on the variable (before alignment)."""
        alignment = self.alignment if alignment is None else alignment
        if alignment not in ALIGNMENTS:
            raise MlsimkitError(f"generator 'ctgan', parameter 'alignment': expected one of {ALIGNMENTS}, "
                                f"got {alignment!r}")
        raw = self.sample_raw(n_clusters, seed=seed)
        return self.align(raw, alignment)

    def align(self, raw: pd.DataFrame, alignment: str = "clca") -> tuple[MultilevelData, pd.DataFrame]:
        """Apply an alignment to the rows of :meth:`sample_raw` and assemble the multilevel data."""
        lay, schema = self.layout_, self.schema_
        cluster = raw["_cluster"].to_numpy()
        sizes = np.bincount(cluster)
        J = sizes.size
        first = np.r_[0, np.cumsum(sizes)[:-1]]
        parent_vals, report = {}, []
        for c in lay.parent_vars:
            col = schema.column(c)
            t0 = time.perf_counter()
            rec = {"variable": c, "kind": col.kind, "alignment": alignment, "status": "", "fallback": False,
                   "objective": np.nan}
            if col.kind == "numerical":
                v = raw[c].to_numpy(dtype=float)
                rec["inconsistent_share"] = _share_varying(cluster, v, J)
                if alignment == "clca":
                    vals = clca.align_numerical(cluster, v, self.real_parent_[c])
                elif alignment == "naive":
                    vals = finish_numeric(clca.naive_numerical(cluster, v), col)
                else:
                    vals = finish_numeric(v[first], col)
            else:
                codes = codes_of(raw[c], col)
                rec["inconsistent_share"] = _share_varying(cluster, codes.astype(float), J)
                K = len(col.levels)
                q, n = clca.within_cluster_proportions(cluster, codes, K)
                if alignment == "clca":
                    tgt = self.real_parent_[c]
                    res = clca.align_categorical(q, n, tgt["p"], tgt["m"], weights=self.weights,
                                                 time_limit=self.time_limit)
                    vals = res.categories
                    rec.update(status=res.status, fallback=res.fallback, objective=res.objective)
                elif alignment == "naive":
                    vals = clca.naive_categorical(q)
                else:
                    vals = codes[first]
            rec["seconds"] = time.perf_counter() - t0
            parent_vals[c] = vals
            report.append(rec)
        child_vals = {c: raw[c].to_numpy() for c in lay.child_vars}
        data = assemble(schema, lay, parent_vals, child_vals, sizes)
        return data, pd.DataFrame(report)

    def sample(self, n_clusters: int, *, seed: Any) -> MultilevelData:
        """``n_clusters`` synthetic schools (sizes as described in the module docstring), aligned."""
        return self.sample_with_report(n_clusters, seed=seed)[0]

    # ------------------------------------------------------------------ diagnostics
    def conditioning_report(self, real: MultilevelData, n_clusters: int | None = None, *, seed: Any = 0) -> pd.DataFrame:
        """How strongly CTGAN's condition ``school = l`` shapes the generated rows (before alignment).

        ``real`` is the data the model was trained on. Rows: ``label match rate`` (share of generated rows whose
        school column equals the condition; ``chance`` = 1 / number of labels) and, per numerical variable,
        the correlation over synthetic schools between the school's mean of the generated rows and the real
        value for its label (student variables: the real school mean; school variables: the real value).
        A condition that worked would give a match rate near 1 and correlations near 1; 0 means no effect.
        """
        self._check_fitted()
        lay = self.layout_
        n = len(self.labels_) if n_clusters is None else self._check_n_clusters(n_clusters)
        rng = as_rng(seed)
        idx, sizes = self._draw_clusters(n, rng)
        rows_label = np.repeat(idx, sizes)
        raw = self._generate(rows_label, rng)
        cond = self.labels_[rows_label]
        out = [dict(quantity="label match rate", variable=lay.key, value=float(np.mean(raw[lay.key].astype(str).to_numpy() == cond)),
                    chance=1.0 / len(self.labels_))]
        cluster = np.repeat(np.arange(n), sizes)
        real_parent = real.parent.assign(**{lay.key: real.parent[lay.key].astype(str)}).set_index(lay.key)
        child = real.child.assign(**{lay.key: real.child[lay.key].astype(str)})
        for c in [*lay.child_vars, *lay.parent_vars]:
            if self.schema_.column(c).kind != "numerical":
                continue
            syn_mean = pd.Series(raw[c].to_numpy(dtype=float)).groupby(cluster).mean().to_numpy()
            if c in lay.child_vars:
                truth = child.groupby(lay.key)[c].mean().reindex(self.labels_[idx]).to_numpy(dtype=float)
                what = "school mean vs the label's real school mean"
            else:
                truth = real_parent[c].reindex(self.labels_[idx]).to_numpy(dtype=float)
                what = "school mean (before alignment) vs the label's real value"
            r = np.corrcoef(syn_mean, truth)[0, 1] if np.std(syn_mean) > 0 and np.std(truth) > 0 else np.nan
            out.append(dict(quantity=f"correlation: {what}", variable=c, value=float(r), chance=0.0))
        return pd.DataFrame(out)

    def metrics_by_construction(self, n_clusters: int) -> dict:
        """Stage 3 metrics that are 1 by construction for samples of ``n_clusters`` schools (``{metric or
        "metric@level": reason}``, see :func:`mlsimkit.quality.evaluate`)."""
        self._check_fitted()
        out = {}
        if self.cluster_size is None and n_clusters % len(self.labels_) == 0:
            out["cardinality shape similarity"] = "each synthetic school gets a real school's size"
            if self.alignment == "clca":
                parent = self.schema_.levels[-2]
                out[f"KSC@{parent}"] = ("CLCA matches the school-level numerical variables to the real "
                                                  "values (a permutation of them)")
        return out


def _inverse_transform(transformer, data: np.ndarray, skip: str | None = None) -> pd.DataFrame:
    """``ctgan``'s ``DataTransformer.inverse_transform`` (no ``sigmas``), leaving out column ``skip``.

    Sampling discards the generated school column, whose one-hot span (160 of HSB's 233 output columns)
    made its decoding the dearest part of the inverse transform. The other columns are decoded exactly as
    ``ctgan`` does (column by column, stacked, cast to the raw dtypes), so the rows are equal to the full
    inverse transform's without that column (tested)."""
    if skip is None:
        return transformer.inverse_transform(data)
    st, cols, names = 0, [], []
    for info in transformer._column_transform_info_list:
        dim = info.output_dimensions
        if info.column_name != skip:
            part = data[:, st:st + dim]
            if info.column_type == "continuous":
                cols.append(transformer._inverse_transform_continuous(info, part, None, st))
            else:
                cols.append(transformer._inverse_transform_discrete(info, part))
            names.append(info.column_name)
        st += dim
    dtypes = transformer._column_raw_dtypes
    out = pd.DataFrame(np.column_stack(cols), columns=names)
    out = out.astype(dtypes.drop(skip) if skip in dtypes.index else dtypes)
    if not transformer.dataframe:
        out = out.to_numpy()
    return out


def _share_varying(cluster: np.ndarray, values: np.ndarray, J: int) -> float:
    """Share of clusters whose rows do not all carry the same value."""
    lo = np.full(J, np.inf)
    hi = np.full(J, -np.inf)
    np.minimum.at(lo, cluster, values)
    np.maximum.at(hi, cluster, values)
    return float(np.mean(hi > lo))
