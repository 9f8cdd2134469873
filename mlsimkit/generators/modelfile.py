"""The saved-model file: JSON metadata and arrays, so that loading a generator runs no code.

A generator is saved as one file (by convention ``<name>.mlsim``; format versions 3-5 were zip archives
named ``.zip``) laid out as a safetensors file is:

* 8 bytes ``MLSIMKIT``, the format version (:data:`FORMAT_VERSION`) as a little-endian u32 and the length
  N of the metadata as a little-endian u64, so that the version is read before anything else;
* N bytes of ``metadata.json`` (UTF-8 JSON);
* the buffer: the raw bytes of the members ``arrays.bin`` (at offset 0) and ``pickle/<k>.pkl``, one after
  the other, nothing after the last.

``metadata.json``
    Compact JSON, in this order: ``magic`` (``"mlsimkit-generator"``), ``format_version`` (the prefix's),
    the ``mlsimkit`` version that wrote it, ``class`` (a name on the allow-list
    :data:`GENERATOR_CLASSES`), the constructor ``settings``, the ``schema`` it was trained on
    (:meth:`Schema.to_dict`), a ``training`` summary (seconds, final losses, the decoding failures of a
    generator that counts them), ``requires_trust``, ``members`` (each member's record ``[offset,
    length]`` in the buffer), ``entries`` (the SHA-256 of every member), ``state`` (below),
    ``content_sha256`` (the SHA-256 of the file's text before this key, closed with ``}``: of everything
    above, byte for byte as written) and ``signature`` (see "Trust" below). Nothing may follow the
    signature: the text after the hashed part must be exactly these two keys.
``state`` (in ``metadata.json``)
    The fitted state as a tree of JSON values: numbers (non-finite floats as JSON's ``NaN`` / ``Infinity``
    extension), strings, lists, dicts with string keys as JSON objects, and tagged records (an object
    whose first key starts with ``__``) for the rest: tuples, other dicts, numpy arrays and scalars,
    pandas frames / series / indexes (categorical columns as codes and categories), torch networks (class
    from the allow-list, constructor arguments and a state dict), objects of the allow-listed classes
    :data:`OBJECT_CLASSES` (restored by setting their attributes, never by calling anything named in the
    file), and ``{"__schema__": <source>}`` for the schema of the metadata (stored once; rebuilt by
    :meth:`Schema.from_dict`, which validates it: once per process for each exact JSON text of a schema,
    a later file with that text getting its own copy of the schema built then). Parsing it runs no code;
    it is decoded only after every check below. (Format version 4 had it in a member ``state.json`` and the schema a second time in it.)
``arrays.bin``
    Every numerical array and tensor (and every array of strings) as raw bytes, one after the other (each
    starting at a multiple of 16 bytes); the state records each one as ``[offset, length, dtype, shape]``
    (the offset in the buffer; the dtype a plain numpy dtype string such as ``<f8``: never an object
    dtype), and reading is :func:`numpy.frombuffer` on a slice checked against the member's end, the
    length its dtype and shape imply and the arrays read before (no two may share a byte), so nothing in
    the file is interpreted as anything but numbers. Network weights are stored the same way and copied
    into a network built from its constructor arguments on the ``meta`` device (no random
    initialisation, no global RNG use).
``pickle/<k>.pkl``
    Only for CTGAN: the ``ctgan`` package's own model object, which has no array form here (its data
    transformer holds ``rdt`` transformer objects). Such a file has ``requires_trust: true``.

The file is built in memory and written with one call to a temporary file renamed onto the target; it is
read with two calls (the 20-byte prefix, then the rest) and sliced in memory without copies. Format
version 5 was the same metadata and members in a stored zip archive; the zip container cost about a tenth
of a small model's round trip.

Loading (:func:`read`) checks, before it reads the rest of the file, the prefix, the format version and
the metadata's length (at most 256 MiB, and within the file); then the metadata, and every member record
against the buffer (inside it, no overlaps, nothing after the last: a shorter buffer is a truncated file)
before it touches any member. A truncated or damaged file, another format version (a version-2 pickle
from an earlier build is recognised without unpickling it, and a zip archive of versions 3-5 by its
``metadata.json``), a class not on the allow-list, a schema other than the expected one, and a content
hash that does not match each raise one :class:`~mlsimkit.errors.FormatVersionError` naming the file and
the reason.

Trust
-----
Unpickling runs code, so a member ``pickle/*`` is read only when the caller says ``trust=True`` (params:
``trust_model_files: true``) or the file carries a valid ``signature``: an HMAC-SHA256 of its content hash
under a key that this user's mlsimkit created on this machine (``~/.config/mlsimkit/model-key``, or the
file named by the environment variable ``MLSIMKIT_MODEL_KEY``; see :func:`key_file`). Every file mlsimkit
writes is signed, so models a project trained itself (its model cache, its ``2-train/models``) load
without the flag, while a model file from anyone else (a fork's ``runs/_models/``, a download) is refused with an error that says
why and how to opt in. The key never enters a file; anyone with it can sign, so keep it private.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import hmac
import io
import json
import math
import operator
import os
import pickle
import pickletools
import secrets
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import FormatVersionError, MlsimkitError
from ..io import write_bytes
from ..schema import Schema, Table

#: 6: one file (prefix, version, metadata length, metadata.json, buffer) instead of a zip archive; member
#: records [offset, length], array records [offset, length, dtype, shape].
#: 5: as 4, the state inside metadata.json (no state.json), the schema stored once (the state refers to
#: the metadata's), dicts with string keys as JSON objects, the content hash of metadata.json's bytes.
#: 4: as 3, with all arrays in one raw member ``arrays.bin``.
#: 3: zip of JSON metadata + numpy arrays (no pickle, except CTGAN's model behind trust).
#: 2: pickle; the diffusion generator's ``sample_batch`` became ``sample_block``. 1: pickle.
FORMAT_VERSION = 6
MAGIC = "mlsimkit-generator"
#: the first bytes of a file: these 8, the format version (u32) and the length of metadata.json (u64)
_PREFIX = b"MLSIMKIT"
_HEAD = struct.Struct("<8sIQ")
#: file name suffix of a saved generator (``models/<name>.mlsim``)
SUFFIX = ".mlsim"
_META = "metadata.json"
_ARRAYS = "arrays.bin"
#: dtype kinds an array may have (no objects, no structured records)
_ARRAY_KINDS = "biufcUSmM"
#: the largest metadata.json read (it holds the state: frames' arrays are in arrays.bin, their other
#: values in the JSON)
_MAX_META_BYTES = 256 * 2**20
#: how many evenly spaced items of a string array are looked at to decide whether to factorise it
_SAMPLE = 256

#: generator classes a file may name (short name -> "module:qualname"), imported only when named
GENERATOR_CLASSES = {
    "SchoolBootstrap": "mlsimkit.generators.bootstrap:SchoolBootstrap",
    "ParametricGenerator": "mlsimkit.generators.parametric:ParametricGenerator",
    "SchoolPool": "mlsimkit.generators.pool:SchoolPool",
    "ClavaDDPMGenerator": "mlsimkit.generators.diffusion:ClavaDDPMGenerator",
    "CTGANGenerator": "mlsimkit.generators.ctgan_clca:CTGANGenerator",
    "TabularTransformerGenerator": "mlsimkit.generators.transformer:TabularTransformerGenerator",
}
#: other classes whose objects may appear in a saved state, restored by setting their attributes
OBJECT_CLASSES = {
    "mlsimkit.schema:Schema", "mlsimkit.schema:Table", "mlsimkit.schema:Column",
    "mlsimkit.decompose:DecompositionInfo", "mlsimkit.generators._assemble:TwoLevel",
    "mlsimkit.generators._ddpm:TableCodec", "mlsimkit.generators._ddpm:GaussianDiffusion",
    "sklearn.preprocessing._data:QuantileTransformer",
}
#: torch networks: rebuilt from their constructor arguments (``init_args``) and a state dict
TORCH_CLASSES = {"mlsimkit.generators._ddpm:Denoiser", "mlsimkit.generators._ddpm:NoisyClassifier",
                 "mlsimkit.generators.transformer:CausalTransformer"}
#: modules whose objects may only be pickled (behind trust)
PICKLED_MODULES = ("ctgan.",)
_EXT_DTYPES = {"string", "Int64", "Int32", "Float64", "boolean"}
#: types stored as themselves (the encoder's fast path; a non-finite float as JSON's NaN / Infinity
#: extension, which Python's json writes and reads back exactly)
_PLAIN = frozenset({type(None), bool, str, int, float})
#: {str}: the key types of a dict stored as a JSON object
_STR = frozenset({str})
#: the classes of :data:`OBJECT_CLASSES` the encoder has met (exact type -> name; skips the other checks)
_OBJECT_TYPES: dict[type, str] = {}
#: what :func:`json.loads` returns for a JSON scalar (the decoder's fast path)
_JSON_SCALARS = frozenset({type(None), bool, int, float, str})


def _qualname(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


@functools.lru_cache(maxsize=None)
def _import(spec: str):
    """The class named ``module:qualname`` (callers pass only names from the allow-lists; cached, since
    :func:`importlib.import_module` costs microseconds per call even for a loaded module)."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ============================================================================ trust key
def key_file() -> Path:
    """Where this user's signing key lives: ``MLSIMKIT_MODEL_KEY`` if set, else
    ``~/.config/mlsimkit/model-key``, else (a home that cannot be written, as on some CI runners)
    ``<temp dir>/mlsimkit-<uid>/model-key``."""
    env = os.environ.get("MLSIMKIT_MODEL_KEY")
    if env:
        return Path(env)
    home = _home_key(os.path.expanduser("~"))
    if os.path.isfile(home) or os.access(_existing_parent(home), os.W_OK):
        return home
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"mlsimkit-{uid}" / "model-key"


@functools.lru_cache(maxsize=8)
def _home_key(home: str) -> Path:
    """``<home>/.config/mlsimkit/model-key`` (cached: building the path costs more than the stat that
    checks it, a tenth of a small model's save)."""
    return Path(home) / ".config" / "mlsimkit" / "model-key"


def _existing_parent(path: Path) -> Path:
    for p in path.parents:
        if p.exists():
            return p
    return path.parent


#: the key read in this process, by the identity of its file (path, type and mode, device, inode, size, mtime,
#: owner)
_KEYS: dict[tuple, bytes] = {}


def _key_ident(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_uid)


def _key(create: bool) -> bytes | None:
    """This user's signing key (created with mode 0600 on first use when ``create``); None if unavailable
    (files are then unsigned, and a CTGAN model needs ``trust=True``). A key read before is reused while
    its file stats the same (one ``stat``: on a slow file system the checks of the folder cost more than
    a small model's save); a file that changed, moved or is new is checked and read again."""
    env = os.environ.get("MLSIMKIT_MODEL_KEY")
    # a key read before, at the place key_file() names first (one stat; ``ident`` is that of a file read
    # as a key, so a folder or another file there now does not match)
    ident = _key_ident(Path(env) if env else _home_key(os.path.expanduser("~")))
    if ident is not None and ident in _KEYS:
        return _KEYS[ident]
    path = key_file()  # (e.g. the fallback in the temp dir)
    ident = _key_ident(path)
    if ident is not None and ident in _KEYS:
        return _KEYS[ident]
    try:
        if path.parent.exists() and hasattr(os, "getuid") and path.parent.stat().st_uid != os.getuid():
            return None  # a folder someone else made (e.g. in a shared temp dir) cannot hold our key
        if path.is_file():
            ident = _key_ident(path)
            key = bytes.fromhex(path.read_text().strip())
            _KEYS.clear()
            if ident is not None and _key_ident(path) == ident:  # not replaced while being read
                _KEYS[ident] = key
            return key
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())
    except FileExistsError:  # another process created it meanwhile
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):  # unwritable, or a damaged key: unsigned files
        return None


def _sign(content: str, key: bytes | None) -> str | None:
    return None if key is None else hmac.digest(key, content.encode(), "sha256").hex()


# ============================================================================ schemas
#: schemas :meth:`Schema.from_dict` built and validated in this process, by the exact JSON text of their dict
#: (:func:`_dumps`: ``1``, ``1.0`` and ``true`` differ there, as they may in what ``from_dict`` makes of them)
_SCHEMAS: dict[str, Schema] = {}
#: the JSON text of a schema's dict, by the schema's ``id`` (the schema, its parts and the text)
_SCHEMA_TEXTS: dict[int, tuple] = {}
_CACHED = 16


def _schema_parts(schema: Schema) -> list:
    """What :meth:`Schema.to_dict` reads from ``schema``: its fields, its dict of tables and, in order, each
    table and its (frozen) columns; compared by identity (:func:`_same_parts`), so a schema whose dicts
    were changed in place (it is frozen otherwise) counts as another."""
    parts = [schema.name, schema.missing, schema.extra_columns, schema.join_as_one, schema.description,
             schema.obtain, schema.tables]
    for t in schema.tables.values():
        parts.append(t)
        parts.extend(t.columns.values())
    return parts


def _same_parts(a: list, b: list) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _schema_json(schema: Schema | None) -> str:
    """The compact JSON text of ``schema.to_dict()`` ("null" for None), reused while the same schema object
    holds the same parts (:func:`_schema_parts`; building and dumping the dict is a tenth of a small
    model's save)."""
    if schema is None:
        return "null"
    hit = _SCHEMA_TEXTS.get(id(schema))
    parts = _schema_parts(schema)
    if hit is not None and hit[0] is schema and _same_parts(hit[1], parts):
        return hit[2]
    text = _dumps(schema.to_dict())
    if len(_SCHEMA_TEXTS) >= _CACHED:
        _SCHEMA_TEXTS.clear()
    # (the schema and its parts are kept: no id is reused while the entry lives)
    _SCHEMA_TEXTS[id(schema)] = (schema, parts, text)
    return text


def _schema_from_dict(spec, source: str | None = None) -> Schema:
    """``Schema.from_dict(spec, source=source)``, validated once per distinct JSON text of ``spec`` in this
    process; every call returns its own schema object (own dicts of tables and columns; the columns and
    the tables' other fields are immutable and shared)."""
    try:
        key = _dumps(spec)
    except (TypeError, ValueError):  # not a JSON tree (a caller's mapping): not cached
        return Schema.from_dict(spec, source=source)
    have = _SCHEMAS.get(key)
    if have is None:
        have = Schema.from_dict(spec, source=source)  # (its errors name the source)
        if len(_SCHEMAS) >= _CACHED:
            _SCHEMAS.clear()
        _SCHEMAS[key] = have
    out = Schema.__new__(Schema)
    out.__dict__.update(have.__dict__)
    tables = {}
    for name, t in have.tables.items():
        table = tables[name] = Table.__new__(Table)
        table.__dict__.update(t.__dict__)
        table.__dict__["columns"] = dict(t.columns)
    out.__dict__["tables"] = tables
    out.__dict__["source"] = source
    return out


# ============================================================================ encoding
class _Encoder:
    """Turns a generator's state into JSON values plus named array and pickle members.

    Parameters
    ----------
    schema : Schema, optional
        The schema recorded in the metadata: a :class:`~mlsimkit.schema.Schema` equal to it is stored as a
        reference ``{"__schema__": <its source>}`` instead of a second copy.
    """

    def __init__(self, schema=None):
        self.schema = schema
        self.members: dict[str, bytes] = {}
        self.chunks: list[bytes] = []
        self.size = 0

    def _array(self, a: np.ndarray) -> list:
        """Append ``a``'s bytes to ``arrays.bin``; its record is ``[offset, length, dtype, shape]``."""
        a = np.ascontiguousarray(a)
        pad = -self.size % 16
        if pad:
            self.chunks.append(bytes(pad))
        offset = self.size + pad
        data = a.tobytes()
        self.chunks.append(data)
        self.size = offset + len(data)
        return [offset, len(data), a.dtype.str, list(a.shape)]

    def finish(self) -> dict[str, bytes]:
        """All members: the arrays (when there are any) and the pickled ones."""
        return {**({_ARRAYS: b"".join(self.chunks)} if self.chunks else {}), **self.members}

    def ndarray(self, a: np.ndarray, where: str):
        if a.dtype.kind in _ARRAY_KINDS:
            return {"__array__": self._array(a)}
        if a.dtype.kind == "O":
            flat = a.ravel()
            if pd.api.types.infer_dtype(flat, skipna=False) == "string":  # every item a str (one C pass)
                items = flat.tolist()
                # e.g. a foreign key: store each value once. Factorising all the items costs more than the
                # rest of the column, so it runs only when the first items or an evenly spaced sample hold
                # a value twice (unique ids don't; samples that miss the repeats only cost file size)
                repeated = any(len(set(sample)) < len(sample)
                               for sample in (items[:_SAMPLE], items[::max(1, len(items) // _SAMPLE)]))
                if repeated:
                    codes, uniques = pd.factorize(flat)
                    repeated = len(uniques) <= len(items) // 2
                if repeated:
                    items = uniques.tolist()
                text = "\x00".join(items)
                if text.count("\x00") == len(items) - 1:
                    # strings: one UTF-8 buffer, NUL-separated (compact, and split back in one C call)
                    blob = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
                    out = {"__strings__": self._array(blob), "shape": list(a.shape)}
                    if repeated:
                        out["codes"] = self.ndarray(codes.astype(np.int64), where)
                    return out
            return {"__objects__": [self.enc(v, where) for v in flat], "shape": list(a.shape)}
        raise MlsimkitError(f"{_where(where)}: an array of dtype {a.dtype} cannot be saved safely")

    def values(self, values, where: str):
        """The values of a pandas column or index."""
        dtype = values.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            cat = values.array  # the Categorical of a column or index (no copy)
            return {"__categorical__": {"codes": self.ndarray(np.asarray(cat.codes), where),
                                        "categories": self.index(cat.categories, where),
                                        "ordered": bool(cat.ordered)}}
        if isinstance(dtype, np.dtype):
            return self.ndarray(np.asarray(values), where)
        if str(dtype) in _EXT_DTYPES:
            vals = [None if pd.isna(v) else v for v in np.asarray(values, dtype=object)]
            return {"__extension__": str(dtype), "values": [self.enc(v, where) for v in vals]}
        raise MlsimkitError(f"{_where(where)}: a column of dtype {dtype} cannot be saved safely")

    def index(self, idx: pd.Index, where: str):
        if isinstance(idx, pd.MultiIndex):
            raise MlsimkitError(f"{_where(where)}: a MultiIndex cannot be saved")
        name = self.enc(idx.name, where)
        if isinstance(idx, pd.RangeIndex):
            return {"__range__": [idx.start, idx.stop, idx.step], "name": name}
        return {"__index__": self.values(idx, where), "name": name}

    def enc(self, obj: Any, where: str):  # noqa: C901 - one branch per supported type
        t = type(obj)
        if t in _PLAIN:
            return obj
        if t is dict:
            # a JSON object of its own when its keys are strings and the first is not a tag (the decoder
            # looks at the first key only); others as a tagged list of pairs
            if not obj or (_STR.issuperset(map(type, obj)) and next(iter(obj))[:2] != "__"):
                if _PLAIN.issuperset(map(type, obj.values())):  # itself: the tree is dumped at once
                    return obj
                return {k: v if type(v) in _PLAIN else self.enc(v, (where, k)) for k, v in obj.items()}
            return {"__dict__": [[k if type(k) in _PLAIN else self.enc(k, where),
                                  v if type(v) in _PLAIN else self.enc(v, (where, k))] for k, v in obj.items()]}
        if t is list:
            if _PLAIN.issuperset(map(type, obj)):  # (one C pass; e.g. a list of names)
                return obj
            return [v if type(v) in _PLAIN else self.enc(v, (where, i)) for i, v in enumerate(obj)]
        if t is tuple:
            if _PLAIN.issuperset(map(type, obj)):
                return {"__tuple__": obj}  # (json writes a tuple as a list)
            return {"__tuple__": [v if type(v) in _PLAIN else self.enc(v, (where, i)) for i, v in enumerate(obj)]}
        if t is np.ndarray:
            return self.ndarray(obj, where)
        if t is Schema and self.schema is not None and (obj is self.schema or obj == self.schema):
            return {"__schema__": obj.source}  # the metadata's schema (compare=False: its source kept here)
        if t in _OBJECT_TYPES:  # an allow-listed class met before (exact type)
            return {"__object__": _OBJECT_TYPES[t], "state": self.enc(_state(obj), where)}
        if isinstance(obj, np.str_):
            return str(obj)
        if isinstance(obj, np.generic):
            if obj.dtype.kind not in "biuf":
                raise MlsimkitError(f"{_where(where)}: a numpy scalar of dtype {obj.dtype} cannot be saved safely")
            return {"__scalar__": obj.dtype.str, "value": self.enc(obj.item(), where)}
        if t is slice:
            return {"__slice__": [self.enc(obj.start, where), self.enc(obj.stop, where), self.enc(obj.step, where)]}
        if isinstance(obj, np.ndarray):
            return self.ndarray(obj, where)
        if isinstance(obj, pd.DataFrame):
            if not obj.columns.is_unique:
                raise MlsimkitError(f"{_where(where)}: a frame with duplicate column names cannot be saved")
            return {"__frame__": {"columns": self.index(obj.columns, where), "index": self.index(obj.index, where),
                                  "data": [self.values(obj[c], (where, c)) for c in obj.columns]}}
        if isinstance(obj, pd.Series):
            return {"__series__": {"values": self.values(obj, where), "index": self.index(obj.index, where),
                                   "name": self.enc(obj.name, where)}}
        if isinstance(obj, pd.Index):
            return self.index(obj, where)
        if isinstance(obj, np.random.SeedSequence):
            return {"__seedsequence__": {"entropy": self.enc(obj.entropy, where),
                                         "spawn_key": self.enc(tuple(obj.spawn_key), where),
                                         "pool_size": obj.pool_size,
                                         "n_children_spawned": obj.n_children_spawned}}
        name = _qualname(type(obj))
        from .base import Generator

        if isinstance(obj, Generator):
            short = type(obj).__name__
            if GENERATOR_CLASSES.get(short) != name:
                raise MlsimkitError(f"{_where(where)}: generator class {name} is not on the allow-list of saved models")
            return {"__generator__": short, "state": self.enc(_state(obj), where)}
        if name in TORCH_CLASSES:
            state = {k: {"__array__": self._array(v.detach().cpu().numpy())} for k, v in obj.state_dict().items()}
            return {"__torch__": name, "init": self.enc(dict(obj.init_args), where), "state": state,
                    "training": bool(obj.training)}
        if type(obj).__module__ == "torch" and type(obj).__name__ == "Tensor":
            return {"__tensor__": self._array(obj.detach().cpu().numpy())}
        if name in OBJECT_CLASSES:
            _OBJECT_TYPES[type(obj)] = name
            return {"__object__": name, "state": self.enc(_state(obj), where)}
        if type(obj).__module__.startswith(PICKLED_MODULES):
            member = f"pickle/{len(self.members):05d}.pkl"
            self.members[member] = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            return {"__pickle__": member}
        raise MlsimkitError(f"{_where(where)}: an object of type {name} cannot be saved safely (not on the allow-list)")


def _where(where) -> str:
    """The readable location of a value: ``where`` is a string or a ``(parent, key)`` pair built lazily
    (formatting every location while encoding costs more than encoding small values)."""
    if type(where) is tuple:
        parent, key = where
        return f"{_where(parent)}[{key!r}]"
    return where


def _state(obj) -> dict:
    state = obj.__getstate__()
    if not isinstance(state, dict):
        raise MlsimkitError(f"object of type {_qualname(type(obj))}: its state is not a mapping")
    return dict(state)


@functools.lru_cache(maxsize=256)
def _plain_dtype(spec: str) -> np.dtype | None:
    """The numpy dtype a record names if it is a plain one (kind in :data:`_ARRAY_KINDS`, no fields),
    else None (cached: a state names a handful of dtypes many times)."""
    if type(spec) is not str:
        return None
    dt = np.dtype(spec)
    return dt if dt.kind in _ARRAY_KINDS and dt.fields is None else None


class _Decoder:
    """Rebuilds the values :class:`_Encoder` wrote.

    Parameters
    ----------
    blobs : dict
        The file's members (name -> bytes, or a view of the file's buffer).
    path : Path
        The file, named in every error.
    allow_pickle : bool
        Set by :func:`read` only after the trust / signature check of a file with ``pickle/`` members; a
        ``__pickle__`` record is then honoured only for a member under ``pickle/`` (never an array member).
    schema : Schema or dict, optional
        What a ``__schema__`` reference stands for: the metadata's schema, built (and validated by
        :meth:`Schema.from_dict`) at the first reference when given as its dict.
    """

    def __init__(self, blobs: dict[str, bytes], path: Path, *, allow_pickle: bool = False, schema=None):
        self.blobs, self.path, self.allow_pickle = blobs, path, allow_pickle
        self.schema = schema
        self.schemas: dict = {}  # source -> the schema with that source
        self.spans: list[tuple[int, int]] = []  # the byte ranges of the arrays read so far, sorted

    def _schema(self, source) -> Schema:
        """The metadata's schema with ``source`` (the one object per source, as the saved state shared it)."""
        if source is not None and type(source) is not str:
            raise self.bad(f"a schema reference to {source!r}")
        if source in self.schemas:
            return self.schemas[source]
        if not isinstance(self.schema, Schema):
            if not isinstance(self.schema, dict):
                raise self.bad("a schema reference, and no schema in its metadata")
            try:  # built with the first reference's source (no copy for it)
                self.schema = _schema_from_dict(self.schema, source=source)
            except MlsimkitError as exc:
                raise self.bad(f"unreadable schema: {exc}") from None
        out = self.schema if self.schema.source == source else dataclasses.replace(self.schema, source=source)
        self.schemas[source] = out
        return out

    def _member(self, member: str) -> bytes:
        if member not in self.blobs:
            raise self.bad(f"no member {member!r}")
        return self.blobs[member]

    def _array(self, spec) -> np.ndarray:
        """The array recorded as ``[offset, length, dtype, shape]`` in ``arrays.bin`` (bounds, length, dtype
        and overlap with the arrays read before checked before any byte is read; offset, length and the
        dimensions must be JSON integers, not booleans or floats)."""
        try:
            offset, length, dtype, shape = spec
            dt = _plain_dtype(dtype)
        except (TypeError, ValueError):
            dt = None
        count = 1
        if dt is not None and type(offset) is int and type(length) is int and offset >= 0 and type(shape) is list:
            for n in shape:
                if type(n) is not int or n < 0:
                    dt = None
                    break
                count *= n
        else:
            dt = None
        if dt is None:
            raise self.bad(f"an array record that is not [offset, length, plain dtype, shape]: {spec!r}")
        blob = self._member(_ARRAYS)
        if length != count * dt.itemsize:
            raise self.bad(f"an array record whose length does not match its dtype and shape: {spec!r}")
        end = offset + length
        if end > len(blob):
            raise self.bad(f"an array record beyond the end of {_ARRAYS}")
        if length:
            spans = self.spans
            i = bisect.bisect(spans, (offset, end))
            if (i and spans[i - 1][1] > offset) or (i < len(spans) and spans[i][0] < end):
                raise self.bad(f"an array record overlapping another one: {spec!r}")
            spans.insert(i, (offset, end))
        # one constructor on the checked slice (frombuffer + reshape cost a third more), then an own copy
        return np.ndarray(shape, dt, buffer=blob, offset=offset).copy()

    def values(self, spec):
        if "__categorical__" in spec:
            c = spec["__categorical__"]
            return pd.Categorical.from_codes(self.dec(c["codes"]), categories=self.index(c["categories"]),
                                             ordered=c["ordered"])
        if "__extension__" in spec:
            if spec["__extension__"] not in _EXT_DTYPES:
                raise self.bad(f"unknown column dtype {spec['__extension__']!r}")
            return pd.array([self.dec(v) for v in spec["values"]], dtype=spec["__extension__"])
        return self.dec(spec)

    def index(self, spec):
        if "__range__" in spec:
            return pd.RangeIndex(*spec["__range__"], name=self.dec(spec["name"]))
        values = self.values(spec["__index__"])
        # an array's dtype is the saved index's (as saved; it also spares pandas' type inference)
        dtype = values.dtype if isinstance(values, np.ndarray) else None
        return pd.Index(values, dtype=dtype, name=self.dec(spec["name"]), tupleize_cols=False)

    def bad(self, reason: str) -> FormatVersionError:
        return FormatVersionError(f"file '{self.path}': damaged saved generator ({reason})")

    def dec(self, x):  # noqa: C901 - one branch per tag
        if type(x) in _JSON_SCALARS:
            return x
        if type(x) is list:
            if _JSON_SCALARS.issuperset(map(type, x)):  # itself: the parsed tree is not used elsewhere
                return x
            return [v if type(v) in _JSON_SCALARS else self.dec(v) for v in x]
        if type(x) is not dict:
            raise self.bad(f"unexpected value {type(x).__name__}")
        if not x:
            return {}
        tag = next(iter(x))
        if tag[:2] != "__":  # a dict with string keys (the encoder tags every other record)
            if _JSON_SCALARS.issuperset(map(type, x.values())):
                return x
            return {k: v if type(v) in _JSON_SCALARS else self.dec(v) for k, v in x.items()}
        if tag == "__dict__":
            return {k if type(k) in _JSON_SCALARS else self.dec(k): v if type(v) in _JSON_SCALARS else self.dec(v)
                    for k, v in x[tag]}
        # the frequent tags first
        if tag == "__object__":
            if x[tag] not in OBJECT_CLASSES:
                raise self.bad(f"class {x[tag]!r} is not on the allow-list")
            return _restore(_import(x[tag]), self.dec(x["state"]))
        if tag == "__schema__":
            return self._schema(x[tag])
        if tag == "__array__":
            a = self._array(x[tag])
            return a.astype(object) if x.get("object") else a
        if tag == "__tuple__":
            v = x[tag]
            if type(v) is list and _JSON_SCALARS.issuperset(map(type, v)):
                return tuple(v)
            return tuple([v if type(v) in _JSON_SCALARS else self.dec(v) for v in x[tag]])
        if tag == "__scalar__":
            dt = np.dtype(x[tag])
            if dt.kind not in "biuf":
                raise self.bad(f"scalar dtype {dt}")
            return dt.type(self.dec(x["value"]))
        if tag == "__slice__":
            return slice(*(self.dec(v) for v in x[tag]))
        if tag == "__strings__":
            blob = self._array(x[tag])
            if blob.dtype != np.uint8 or blob.ndim != 1:
                raise self.bad("a string buffer that is not bytes")
            out = np.array(blob.tobytes().decode("utf-8").split("\x00"), dtype=object)
            if "codes" in x:
                codes = self.dec(x["codes"])
                if not isinstance(codes, np.ndarray) or codes.dtype.kind != "i" or codes.size and (
                        codes.min() < 0 or codes.max() >= out.size):
                    raise self.bad("string codes out of range")
                out = out[codes]
            if out.size != int(np.prod(x["shape"])):
                raise self.bad("a string buffer of the wrong length")
            return out.reshape(x["shape"])
        if tag == "__objects__":
            out = np.empty(len(x[tag]), dtype=object)
            out[:] = [self.dec(v) for v in x[tag]]
            return out.reshape(x["shape"])
        if tag in ("__range__", "__index__"):
            return self.index(x)
        if tag == "__frame__":
            f = x[tag]
            cols = self.index(f["columns"])
            data = {i: self.values(v) for i, v in enumerate(f["data"])}
            df = pd.DataFrame(data, index=self.index(f["index"]), copy=False)
            df.columns = cols
            return df
        if tag == "__series__":
            s = x[tag]
            return pd.Series(self.values(s["values"]), index=self.index(s["index"]), name=self.dec(s["name"]),
                             copy=False)
        if tag == "__seedsequence__":
            s = {k: self.dec(v) for k, v in x[tag].items()}
            return np.random.SeedSequence(s["entropy"], spawn_key=s["spawn_key"], pool_size=s["pool_size"],
                                          n_children_spawned=s["n_children_spawned"])
        if tag == "__generator__":
            if x[tag] not in GENERATOR_CLASSES:
                raise self.bad(f"generator class {x[tag]!r} is not on the allow-list")
            return _restore(_import(GENERATOR_CLASSES[x[tag]]), self.dec(x["state"]))
        if tag == "__torch__":
            if x[tag] not in TORCH_CLASSES:
                raise self.bad(f"network class {x[tag]!r} is not on the allow-list")
            import torch

            with torch.device("meta"):
                net = _import(x[tag])(**self.dec(x["init"]))
            net = net.to_empty(device="cpu")
            net.load_state_dict({k: torch.from_numpy(self.dec(v)) for k, v in x["state"].items()})
            net.train(x["training"])
            for p in net.parameters():
                p.requires_grad_(False)
            return net
        if tag == "__tensor__":
            import torch

            return torch.from_numpy(self._array(x[tag]))
        if tag == "__pickle__":
            member = x[tag]
            if not (self.allow_pickle and isinstance(member, str) and member.startswith("pickle/")):
                raise self.bad(f"a pickled record ({member!r}) outside a trusted file's pickle/ members")
            return pickle.loads(bytes(self._member(member)))
        raise self.bad(f"unknown record {tag!r}")


def _restore(cls, state: dict):
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


# ============================================================================ metadata
def _plain(obj):
    """A JSON-friendly description of constructor settings (for the reader of ``metadata.json``)."""
    t = type(obj)
    if t in _PLAIN:  # the usual settings first (no import, no isinstance chain)
        return obj if t is not float or math.isfinite(obj) else repr(obj)
    if t is dict:
        return {str(k): _plain(v) for k, v in obj.items()}
    from .base import Generator

    if isinstance(obj, Generator):
        return {"class": type(obj).__name__, "settings": _plain(obj.get_params())}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, str)) or (isinstance(obj, float) and np.isfinite(obj)):
        return obj
    return repr(obj)


def _training(gen) -> dict:
    out = {}
    for key, attr in (("train_seconds", "train_seconds_"), ("fit_seconds", "fit_seconds_"),
                      ("fit_seconds", "fit_time_"), ("build_seconds", "build_time_")):
        v = getattr(gen, attr, None)
        if v is not None:
            out[key] = round(float(v), 3)
    failures = getattr(gen, "decode_failures_total_", None)  # the LLM-style generator's invalid draws
    if failures is not None:
        out["decode_failures"] = int(failures)
    h = getattr(gen, "history_", None)
    if isinstance(h, pd.DataFrame) and len(h):
        out["history_rows"] = int(len(h))
        if {"model", "loss"} <= set(h.columns):
            out["final_loss"] = {str(m): float(g["loss"].iloc[-1]) for m, g in h.groupby("model", sort=False)}
        else:
            out["final_loss"] = {str(c): float(h[c].iloc[-1]) for c in h.columns if c != "epoch"}
    return out


def _dumps(value) -> str:
    """Compact JSON (``check_circular=False``: the values are fresh trees; the check costs more than half
    of json's time on a small state)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True, check_circular=False)


def _trailer(content: str, signature: str | None) -> str:
    """The end of ``metadata.json``: its last two keys, ``content_sha256`` and ``signature`` (hex strings,
    written without escapes: a recorded value that needed one does not match its trailer and is refused)."""
    sig = "null" if signature is None else f'"{signature}"'
    return f',"content_sha256":"{content}","signature":{sig}}}'


def seal(meta: dict, key: bytes | None) -> bytes:
    """The bytes of ``metadata.json`` for the metadata ``meta`` (without ``content_sha256`` and
    ``signature``): its compact JSON text, whose SHA-256 is the content hash, with the hash and its
    signature under ``key`` (None: unsigned) appended as the last two keys."""
    return _seal_text(_dumps(meta), key)


def _seal_text(core: str, key: bytes | None) -> bytes:
    """:func:`seal` for the compact JSON text ``core`` of the metadata."""
    content = hashlib.sha256(core.encode()).hexdigest()
    return (core[:-1] + _trailer(content, _sign(content, key))).encode()


def _content_hash(raw: bytes, meta: dict) -> str | None:
    """The content hash of the bytes ``raw`` of ``metadata.json`` (parsed: ``meta``): the SHA-256 of the
    text before its trailer, closed with ``}``; None when the trailer is not exactly what :func:`seal`
    writes for the recorded hash and signature (so no key can follow them) or the hash differs."""
    content, sig = meta.get("content_sha256"), meta.get("signature")
    if type(content) is not str or not (sig is None or type(sig) is str):
        return None
    trailer = _trailer(content, sig).encode()
    if not raw.endswith(trailer) or len(raw) <= len(trailer):
        return None
    digest = hashlib.sha256(raw[:-len(trailer)] + b"}").hexdigest()
    return digest if digest == content else None  # (a public value: no constant-time comparison needed)


# ============================================================================ write / read
def write(gen, path: str | Path) -> Path:
    """Save the fitted generator ``gen`` to ``path`` (atomically) in the format of the module docstring."""
    from .. import __version__

    path = Path(path)
    short = type(gen).__name__
    if GENERATOR_CLASSES.get(short) != _qualname(type(gen)):
        raise MlsimkitError(f"file '{path}': generator class {_qualname(type(gen))} is not on the allow-list of "
                            "saved models (mlsimkit.generators.modelfile.GENERATOR_CLASSES)")
    schema = getattr(gen, "schema_", None)
    if not isinstance(schema, Schema):
        schema = None
    enc = _Encoder(schema)  # the state refers to the metadata's schema instead of holding a second copy
    state = enc.enc(gen, f"generator {short}")
    members = enc.finish()
    # the buffer: arrays.bin first (at offset 0: the array records' offsets are the buffer's), then the
    # pickled members, each recorded as [offset, length]
    records, offset = {}, 0
    for name, data in members.items():
        records[name] = [offset, len(data)]
        offset += len(data)
    head = {"magic": MAGIC, "format_version": FORMAT_VERSION, "mlsimkit": __version__, "class": short,
            "settings": _plain(gen.get_params())}
    tail = {"training": _training(gen), "requires_trust": any(m.startswith("pickle/") for m in members),
            "members": records, "entries": {m: hashlib.sha256(b).hexdigest() for m, b in members.items()},
            "state": state}  # last: the keys above stay at the top for a reader
    # compact: an indented dump runs json's pure-Python encoder (a tenth of a small model's round trip);
    # the content hash is of these bytes as written (no canonical re-dump on save or load). The text is
    # that of one dump of {**head, "schema": schema.to_dict(), **tail}, the schema's part reused from the
    # schema's last save (:func:`_schema_json`)
    core = f'{_dumps(head)[:-1]},"schema":{_schema_json(schema)},{_dumps(tail)[1:]}'
    text = _seal_text(core, _key(create=True))
    # built in memory, written with one call
    return write_bytes(path, b"".join([_HEAD.pack(_PREFIX, FORMAT_VERSION, len(text)), text, *members.values()]))


def _old_pickle_version(path: Path) -> Any:
    """The ``format_version`` of a pickle written by mlsimkit <= 2, read from its opcodes without
    unpickling (None when not found)."""
    try:
        with open(path, "rb") as fh:
            prev = None
            for n, (op, arg, _) in enumerate(pickletools.genops(fh)):
                if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"):
                    continue
                if prev == "format_version" and op.name in ("BININT1", "BININT2", "BININT", "INT"):
                    return arg
                prev = arg if isinstance(arg, str) else None
                if n > 200:
                    break
    except Exception:  # noqa: BLE001 - a damaged stream just means "unknown"
        pass
    return None


def _retrain(path: Path, version, writer) -> FormatVersionError:
    return FormatVersionError(
        f"file '{path}': generator format version {version} (written by mlsimkit {writer}), this mlsimkit "
        f"reads version {FORMAT_VERSION}; retrain and save it again")


def _refuse_old(path: Path, head: bytes) -> FormatVersionError:
    """The error for a file that does not start with :data:`_PREFIX`: a pickle of format version <= 2, a zip
    archive of versions 3-5 (its ``metadata.json`` read only for the version it names), or something else."""
    if head[:1] == b"\x80":
        version = _old_pickle_version(path)
        return FormatVersionError(
            f"file '{path}': a pickled generator (format version {version if version is not None else '<= 2'}) "
            f"from an earlier mlsimkit; pickles are not loaded because unpickling runs code, and this mlsimkit "
            f"reads version {FORMAT_VERSION}; retrain and save it again")
    if head[:4] == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                if zf.getinfo(_META).file_size > _MAX_META_BYTES:
                    raise ValueError
                meta = json.loads(zf.read(_META))
        except KeyError:
            return FormatVersionError(f"file '{path}': not a saved mlsimkit generator (a zip archive without "
                                      f"{_META})")
        except Exception:  # noqa: BLE001 - damaged: its version is unknown
            meta = None
        if isinstance(meta, dict) and meta.get("magic") == MAGIC:
            return _retrain(path, meta.get("format_version"), meta.get("mlsimkit"))
        return FormatVersionError(f"file '{path}': a damaged zip archive of an earlier mlsimkit (format version "
                                  f"3-5); this mlsimkit reads version {FORMAT_VERSION}; retrain and save it again")
    return FormatVersionError(f"file '{path}': not a saved mlsimkit generator (it does not start with "
                              f"{_PREFIX.decode()})")


def _read_file(path: Path) -> tuple[bytes, memoryview]:
    """The bytes of ``metadata.json`` and the buffer of the file at ``path``: the prefix, the format version
    and the metadata's length are checked (against the cap and the file's length) before the rest is
    read, with one call."""
    try:  # (no stat before: open says whether it is there)
        fh = open(path, "rb")
    except OSError:
        if not os.path.isfile(path):
            raise MlsimkitError(f"file '{path}': saved generator not found") from None
        raise
    with fh:
        head = fh.read(_HEAD.size)
        if head[:len(_PREFIX)] != _PREFIX:
            raise _refuse_old(path, head)
        if len(head) < _HEAD.size:
            raise _truncated(path, "its header")
        _, version, n = _HEAD.unpack(head)
        if n > _MAX_META_BYTES:
            raise FormatVersionError(f"file '{path}': not a saved mlsimkit generator ({_META} is too large: "
                                     f"{n} bytes)")
        size = os.fstat(fh.fileno()).st_size
        if version != FORMAT_VERSION:
            writer = "unknown"
            if _HEAD.size + n <= size:
                try:
                    writer = json.loads(fh.read(n)).get("mlsimkit")
                except Exception:  # noqa: BLE001 - only for the message
                    pass
            raise _retrain(path, version, writer)
        if _HEAD.size + n > size:
            raise _truncated(path, _META)
        rest = fh.read()
    return rest[:n], memoryview(rest)[n:]


def _truncated(path: Path, what: str) -> FormatVersionError:
    return FormatVersionError(f"file '{path}': truncated or damaged saved generator ({what} ends beyond the end "
                              "of the file); retrain or copy it again")


def read_metadata(path: str | Path) -> dict:
    """The checked metadata of a saved generator: prefix, magic and format version (the state in it is
    parsed, not decoded; nothing after it is read)."""
    path = Path(path)
    if not path.is_file():
        raise MlsimkitError(f"file '{path}': saved generator not found")
    with open(path, "rb") as fh:
        head = fh.read(_HEAD.size)
    if head[:len(_PREFIX)] != _PREFIX or len(head) < _HEAD.size:
        return _checked_metadata(path, _read_file(path)[0])  # raises the error of such a file
    _, version, n = _HEAD.unpack(head)
    if version != FORMAT_VERSION or n > _MAX_META_BYTES:
        return _checked_metadata(path, _read_file(path)[0])
    with open(path, "rb") as fh:
        fh.seek(_HEAD.size)
        raw = fh.read(n)
    if len(raw) < n:
        raise _truncated(path, _META)
    return _checked_metadata(path, raw)


def _checked_metadata(path: Path, raw) -> dict:
    """The metadata in the bytes ``raw`` of ``metadata.json``, its magic and format version checked."""
    if len(raw) > _MAX_META_BYTES:
        raise FormatVersionError(f"file '{path}': not a saved mlsimkit generator ({_META} is too large)")
    try:
        meta = json.loads(bytes(raw))
    except ValueError as exc:
        raise FormatVersionError(f"file '{path}': damaged saved generator, unreadable {_META} ({exc})") from None
    if not isinstance(meta, dict) or meta.get("magic") != MAGIC:
        raise FormatVersionError(f"file '{path}': not a saved mlsimkit generator (wrong magic)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _retrain(path, meta.get("format_version"), meta.get("mlsimkit"))
    return meta


def _members(path: Path, meta: dict, buffer: memoryview) -> dict:
    """The members the metadata records (name -> a view of the buffer), every record checked: a list
    ``[offset, length]`` of ints inside the buffer, no two overlapping, ``arrays.bin`` at offset 0, and no
    byte of the buffer outside them (a shorter buffer is a truncated file)."""
    records = meta.get("members")
    if not isinstance(records, dict):
        raise FormatVersionError(f"file '{path}': damaged saved generator (no member records in its metadata)")
    spans = []
    for name, rec in records.items():
        if not (type(rec) is list and len(rec) == 2 and all(type(v) is int and v >= 0 for v in rec)):
            raise FormatVersionError(f"file '{path}': damaged saved generator (a member record that is not "
                                     f"[offset, length]: {name!r}: {rec!r})")
        if name == _ARRAYS and rec[0] != 0:
            raise FormatVersionError(f"file '{path}': damaged saved generator ({_ARRAYS} not at offset 0)")
        spans.append((rec[0], rec[0] + rec[1], name))
    spans.sort()
    end = 0
    for start, stop, name in spans:
        if start < end:
            raise FormatVersionError(f"file '{path}': damaged saved generator (member {name} overlaps another)")
        if stop > len(buffer):
            raise _truncated(path, f"member {name}")
        end = stop
    if end != len(buffer):
        raise FormatVersionError(f"file '{path}': damaged saved generator ({len(buffer) - end} bytes after its "
                                 "last member)")
    return {name: buffer[start:stop] for start, stop, name in spans}


def schema_differences(saved, expected) -> list[str]:
    """What differs between the schema recorded in a file (a :class:`Schema` or its dict) and ``expected``
    (empty: the same structure)."""
    have = saved if isinstance(saved, Schema) else _schema_from_dict(saved)
    if have.same_structure(expected):
        return []
    out = []
    for name in sorted(set(have.tables) | set(expected.tables)):
        a, b = have.tables.get(name), expected.tables.get(name)
        if a is None or b is None:
            out.append(f"table '{name}' only in the {'study' if a is None else 'file'}")
            continue
        if (a.primary_key, a.parent, a.foreign_key) != (b.primary_key, b.parent, b.foreign_key):
            out.append(f"table '{name}': keys differ")
        for c in sorted(set(a.columns) | set(b.columns)):
            ca, cb = a.columns.get(c), b.columns.get(c)
            if ca is None or cb is None:
                out.append(f"column '{c}' only in the {'study' if ca is None else 'file'}")
            elif (ca.kind, ca.min, ca.max, ca.levels, ca.integer) != (cb.kind, cb.min, cb.max, cb.levels, cb.integer):
                out.append(f"column '{c}' declared differently")
    return out or ["table order differs"]


def read(path: str | Path, *, schema=None, trust: bool = False):
    """Load a generator written by :func:`write`. Checks, in order and before reading any array: the
    prefix, format version and metadata length, the magic, the member records against the file's length,
    the class (allow-list), the schema (when ``schema`` is given), the trust a pickle member needs, and
    the content hashes; each failure is one
    :class:`~mlsimkit.errors.FormatVersionError` (or :class:`~mlsimkit.errors.MlsimkitError` for a missing
    file) naming the file and the reason."""
    path = Path(path)
    raw, buffer = _read_file(path)
    meta = _checked_metadata(path, raw)
    blobs = _members(path, meta, buffer)
    cls = meta.get("class")
    if cls not in GENERATOR_CLASSES:
        raise FormatVersionError(f"file '{path}': generator class {cls!r} is not on the allow-list of saved "
                                 f"models {sorted(GENERATOR_CLASSES)}")
    saved = meta.get("schema")
    if schema is not None:
        if not isinstance(saved, dict):
            raise FormatVersionError(f"file '{path}': records no schema; expected schema '{schema.name}'")
        try:
            saved = _schema_from_dict(saved)
        except MlsimkitError as exc:
            raise FormatVersionError(f"file '{path}': damaged saved generator, unreadable schema ({exc})") from None
        diff = schema_differences(saved, schema)
        if diff:
            raise FormatVersionError(f"file '{path}': trained on a schema that does not match the study's "
                                     f"'{schema.name}' ({'; '.join(diff[:5])}); retrain on this study's data")
    entries = meta.get("entries")
    names = set(blobs)
    if not isinstance(entries, dict) or set(entries) != names:
        raise FormatVersionError(f"file '{path}': damaged saved generator (its members do not match the "
                                 "list in its metadata)")
    content = _content_hash(raw, meta)
    if content is None:
        raise FormatVersionError(f"file '{path}': content hash mismatch in its metadata (modified or "
                                 "damaged); retrain or copy it again")
    pickled = any(m.startswith("pickle/") for m in names)
    if pickled and not trust:
        sig = meta.get("signature")
        key = _key(create=False)
        # (bytes: compare_digest refuses str with non-ASCII characters, which a forged file may hold)
        if not (isinstance(sig, str) and key is not None
                and hmac.compare_digest(sig.encode(), _sign(content, key).encode())):
            raise MlsimkitError(
                f"file '{path}': this {cls} holds a pickled object (the ctgan package's model), and "
                "unpickling a file runs code with your rights; it was not written by this user's mlsimkit "
                f"(no valid signature, key {key_file()}). Load it only if you trust its author: "
                "load(path, trust=True), or 'trust_model_files: true' in the study's params")
    for m in sorted(names):
        if hashlib.sha256(blobs[m]).hexdigest() != entries[m]:
            raise FormatVersionError(f"file '{path}': content hash mismatch in member {m} (modified or "
                                     "damaged); retrain or copy it again")
    # pickled and untrusted was refused above; the schema built for the check above is reused
    dec = _Decoder(blobs, path, allow_pickle=pickled, schema=saved)
    state = meta.get("state")
    if not isinstance(state, dict) or state.get("__generator__") != cls:
        raise FormatVersionError(f"file '{path}': damaged saved generator (its state is not a {cls})")
    try:
        return dec.dec(state)
    except MlsimkitError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        raise dec.bad(f"its state cannot be rebuilt: {type(exc).__name__}: {exc}") from None
