"""The one protocol every generator follows (Stage 2).

Settings go to the constructor; ``fit(data)`` learns from a :class:`~mlsimkit.data.MultilevelData` and
returns ``self``; ``sample(n_clusters, *, seed)`` returns a new ``MultilevelData`` with the same schema and
fresh keys; ``save(path)`` / :func:`load` write and read the fitted generator as JSON metadata plus numpy
arrays (:mod:`mlsimkit.generators.modelfile`: loading runs no code from the file; a file of another format
version, of a class not on the allow-list, of another schema, truncated or modified is refused with a clear
error). The same seed gives the same sample.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from ..data import MultilevelData
from ..errors import MlsimkitError
from . import modelfile
from .modelfile import FORMAT_VERSION, SUFFIX


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


def torch_device(device: str, generator: str):
    """The torch device a generator's ``device`` setting names: ``"auto"`` is CUDA when torch sees a GPU,
    else the CPU; ``"cuda"`` (or ``"cuda:1"``, ...) on a machine without one is an error naming the
    generator and the setting, raised before any training or sampling starts."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise MlsimkitError(f"generator '{generator}', parameter 'device': expected 'auto', 'cpu' or "
                            f"'cuda[:k]', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MlsimkitError(f"generator '{generator}', parameter 'device': {device!r} asked for, but torch "
                            f"sees no CUDA GPU on this machine (use 'auto' or 'cpu')")
    if dev.type not in ("cpu", "cuda"):
        raise MlsimkitError(f"generator '{generator}', parameter 'device': expected 'auto', 'cpu' or "
                            f"'cuda[:k]', got {device!r}")
    return dev


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

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with _threadpools().limit(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(before)


_CONTROLLER: list = []


def _threadpools():
    """One ``threadpoolctl.ThreadpoolController`` per process, made on first use (torch and numpy are
    loaded by then). ``threadpool_limits(n)`` builds a new one on every call, which scans the process's
    shared libraries: about 5 ms, paid by every ``sample`` call of a simulation."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


#: ``(prefix, width) -> object array of keys 1..m``: keys are immutable strings, so a prefix of a cached
#: array is copied (a pointer copy) instead of formatting the same keys again at every replication.
_IDS: dict = {}


def make_ids(prefix: str, n: int) -> np.ndarray:
    """Fresh text keys ``prefix00001`` ... for synthetic rows (a new array; the strings are shared)."""
    width = max(4, len(str(n)))
    cached = _IDS.get((prefix, width))
    if cached is None or cached.size < n:
        if len(_IDS) > 64:  # many distinct prefixes: keep the cache small
            _IDS.clear()
        cached = np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)
        _IDS[(prefix, width)] = cached
    return cached[:n].copy()


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
        """Save the fitted generator to ``path`` (atomically; by convention ``<name>.mlsim``): JSON metadata
        and numpy arrays, see :mod:`mlsimkit.generators.modelfile`. Returns the path."""
        return modelfile.write(self, path)

    @classmethod
    def load(cls, path: str | Path, *, schema=None, trust: bool = False) -> "Generator":
        """:func:`load`, checking that the file holds a ``cls``."""
        gen = load(path, schema=schema, trust=trust)
        if not isinstance(gen, cls):
            raise MlsimkitError(f"file '{path}': holds a {type(gen).__name__}, expected a {cls.__name__}")
        return gen


def load(path: str | Path, *, schema=None, trust: bool = False) -> Generator:
    """Load a generator saved with :meth:`Generator.save`.

    Runs no code from the file: the metadata is read and checked first (format version, class on the
    allow-list, ``schema`` when given: the schema the caller's data have), then the content hash, then
    the arrays. A CTGAN model holds a pickle of the ``ctgan`` package's object, which is unpickled only
    when the file was written by this user's mlsimkit (signed) or ``trust=True``. Pickled files of
    earlier builds (format version 2) are refused with a message to retrain.
    """
    return modelfile.read(path, schema=schema, trust=trust)
