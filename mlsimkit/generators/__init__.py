"""Stage 2: generators of synthetic multilevel data, all following :class:`Generator`'s protocol."""

from .base import FORMAT_VERSION, Generator, as_rng, load, make_ids

__all__ = ["Generator", "load", "as_rng", "make_ids", "FORMAT_VERSION"]
