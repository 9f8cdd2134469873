"""Stage 2: generators of synthetic multilevel data, all following :class:`Generator`'s protocol.

=========================  ==========================================================================
name                       class
=========================  ==========================================================================
``"clavaddpm"``            :class:`ClavaDDPMGenerator`: multi-table diffusion with variable decomposition
``"ctgan"``                :class:`CTGANGenerator`: CTGAN on the join-as-one table + CLCA alignment
``"tabular-transformer"``  :class:`TabularTransformerGenerator`: LLM-style autoregressive transformer
                           over tokenised rows (schools, then each school's students), from scratch
``"parametric"``           :class:`ParametricGenerator`: multilevel normal / logistic model (traditional)
``"bootstrap"``            :class:`SchoolBootstrap`: resampled real schools (semi-synthetic reference)
=========================  ==========================================================================

:func:`make` builds one by name (``make("ctgan", epochs=300)``); :class:`SchoolPool` wraps any of them to
draw replications from a large pre-generated pool of synthetic schools. ``gen.save("models/x.mlsim")`` and
:func:`load` keep a fitted generator in a file of JSON metadata and numpy arrays that loads without running
code from the file (:mod:`~mlsimkit.generators.modelfile`, whose allow-list names the classes a file may
hold; a new generator is added there).
"""

from .base import FORMAT_VERSION, SUFFIX, Generator, as_rng, load, make_ids
from .bootstrap import SchoolBootstrap
from .ctgan_clca import CTGANGenerator
from .parametric import ParametricGenerator
from .pool import SchoolPool

from ..errors import MlsimkitError


def _clavaddpm():
    """The diffusion generator, imported on first use (it imports torch at module level, which costs
    seconds; and the package must import even where ``diffusion.py`` is absent)."""
    try:
        from .diffusion import ClavaDDPMGenerator
    except ModuleNotFoundError as exc:  # pragma: no cover - only while diffusion.py is absent
        if exc.name != f"{__name__}.diffusion":
            raise
        return None
    return ClavaDDPMGenerator


def _transformer():
    """The LLM-style generator, imported on first use (torch at module level, as :func:`_clavaddpm`)."""
    from .transformer import TabularTransformerGenerator

    return TabularTransformerGenerator


def __getattr__(name):  # PEP 562: ``from mlsimkit.generators import ClavaDDPMGenerator`` stays lazy
    if name == "TabularTransformerGenerator":
        return _transformer()
    if name == "ClavaDDPMGenerator":
        cls = _clavaddpm()
        if cls is None:
            raise ImportError("mlsimkit.generators.diffusion is not available in this installation")
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_REGISTRY = {
    "clavaddpm": _clavaddpm,
    "ctgan": lambda: CTGANGenerator,
    "tabular-transformer": _transformer,
    "parametric": lambda: ParametricGenerator,
    "bootstrap": lambda: SchoolBootstrap,
}
NAMES = tuple(_REGISTRY)


def make(name: str, **settings) -> Generator:
    """A generator by name with constructor settings, e.g. ``make("parametric", cluster_size=20)``."""
    if name not in _REGISTRY:
        raise MlsimkitError(f"generator name {name!r} is not known; expected one of {list(NAMES)}")
    cls = _REGISTRY[name]()
    if cls is None:
        raise MlsimkitError(f"generator {name!r} is not available in this installation (module missing)")
    try:
        return cls(**settings)
    except TypeError as exc:
        raise MlsimkitError(f"generator {name!r}: bad settings {sorted(settings)} ({exc})") from None


__all__ = [
    "Generator", "load", "as_rng", "make_ids", "FORMAT_VERSION", "SUFFIX", "make", "NAMES",
    "ClavaDDPMGenerator", "CTGANGenerator", "TabularTransformerGenerator", "ParametricGenerator", "SchoolBootstrap", "SchoolPool",
]
