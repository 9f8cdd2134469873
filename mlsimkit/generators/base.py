"""The one protocol every generator follows (Stage 2).

Settings go to the constructor; ``fit(data)`` learns from a :class:`~mlsimkit.data.MultilevelData` and
returns ``self``; ``sample(n_clusters, *, seed)`` returns a new ``MultilevelData`` with the same schema and
fresh keys; ``save(path)`` / :func:`load` pickle the fitted generator with a format version, and a file of
another format version is refused with a clear error. The same seed gives the same sample.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..data import MultilevelData
from ..errors import FormatVersionError, MlsimkitError
from ..io import atomic_path

#: 2: the diffusion generator's ``sample_batch`` became ``sample_block`` (blocked sampler), so version-1
#: files would load but fail to sample.
FORMAT_VERSION = 2
_MAGIC = "mlsimkit-generator"


def as_rng(seed: Any) -> np.random.Generator:
    """A numpy Generator from an int, a SeedSequence or a Generator (never the global state)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise MlsimkitError("parameter 'seed': a seed is required so that samples are reproducible")
    return np.random.default_rng(seed)


def torch_seed(rng: np.random.Generator) -> int:
    """An integer seed for a ``torch.Generator`` drawn from a numpy Generator."""
    return int(rng.integers(0, 2**63 - 1))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch (and BLAS / OpenMP) CPU threads (None: unchanged), then restore.

    Generators default to one thread where a busy two-core machine made two threads many times slower
    (oversubscription), and simulation workers each own one core.
    """
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(int(n)):
            yield
    finally:
        torch.set_num_threads(before)


def make_ids(prefix: str, n: int) -> np.ndarray:
    """Fresh text keys ``prefix00001`` ... for synthetic rows."""
    width = max(4, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


class Generator:
    """Base class: subclasses implement ``fit`` and ``sample`` and set fitted attributes ending in ``_``."""

    #: short name used in file names, tables and figures
    name = "generator"

    def fit(self, data: MultilevelData) -> "Generator":  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, n_clusters: int, *, seed: Any) -> MultilevelData:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "schema_", None) is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise MlsimkitError(f"generator '{self.name}': call fit(data) before sample()")

    @staticmethod
    def _check_n_clusters(n_clusters: Any) -> int:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
            raise MlsimkitError(f"parameter 'n_clusters': expected a positive integer, got {n_clusters!r}")
        return int(n_clusters)

    def get_params(self) -> dict:
        """Constructor settings (attributes not ending in ``_``)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Pickle the fitted generator to ``path`` (atomically) with the format version."""
        from .. import __version__

        payload = {"magic": _MAGIC, "format_version": FORMAT_VERSION, "mlsimkit": __version__,
                   "class": f"{type(self).__module__}.{type(self).__qualname__}", "generator": self}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Generator":
        gen = load(path)
        if not isinstance(gen, cls):
            raise MlsimkitError(f"file '{path}': holds a {type(gen).__name__}, expected a {cls.__name__}")
        return gen


def load(path: str | Path) -> Generator:
    """Load a generator saved with :meth:`Generator.save`; refuses other format versions."""
    path = Path(path)
    if not path.is_file():
        raise MlsimkitError(f"file '{path}': saved generator not found")
    with open(path, "rb") as fh:
        try:
            payload = pickle.load(fh)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise FormatVersionError(f"file '{path}': not a saved mlsimkit generator ({exc})") from None
    if not isinstance(payload, dict) or payload.get("magic") != _MAGIC:
        raise FormatVersionError(f"file '{path}': not a saved mlsimkit generator")
    if payload.get("format_version") != FORMAT_VERSION:
        raise FormatVersionError(
            f"file '{path}': generator format version {payload.get('format_version')} (written by mlsimkit "
            f"{payload.get('mlsimkit')}), this mlsimkit reads version {FORMAT_VERSION}; retrain and save it again"
        )
    return payload["generator"]
