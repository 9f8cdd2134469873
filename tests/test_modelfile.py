"""The saved-generator format (version 6): a prefix, JSON metadata and a raw buffer of arrays; loading runs no
code from the file."""

import hashlib
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit.errors import FormatVersionError, MlsimkitError
from mlsimkit.generators import FORMAT_VERSION, ParametricGenerator, SchoolBootstrap, SchoolPool, load
from mlsimkit.generators import modelfile as mf


@pytest.fixture(autouse=True)
def own_key(tmp_path, monkeypatch):
    """A signing key of this test only (never the user's)."""
    monkeypatch.setenv("MLSIMKIT_MODEL_KEY", str(tmp_path / "key"))


@pytest.fixture(scope="module")
def small():
    hsb = ds.load("hsb")
    return hsb.subset(hsb.parent["School"].iloc[::4])  # 40 schools


@pytest.fixture(scope="module")
def boot(small):
    return SchoolBootstrap().fit(small)


class Exploit:
    """Unpickling this creates a file (the classic ``__reduce__`` attack)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _reseal(meta):
    """The text of metadata.json for ``meta`` with its content hash recomputed (its signature kept)."""
    core = json.dumps({k: v for k, v in meta.items() if k not in ("content_sha256", "signature")},
                      separators=(",", ":"))
    return core[:-1] + mf._trailer(hashlib.sha256(core.encode()).hexdigest(), meta.get("signature"))


def _array_records(x):
    """Every ``__array__`` record in a state tree, in the file's order."""
    if isinstance(x, dict):
        if "__array__" in x:
            yield x["__array__"]
        x = list(x.values())
    if isinstance(x, list):
        for v in x:
            yield from _array_records(v)


def _split(path):
    """The bytes of metadata.json, the metadata and the members of a saved file."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[12:20])[0]
    raw, buf = data[20:20 + n], data[20 + n:]
    meta = json.loads(raw)
    return raw, meta, {m: buf[o:o + k] for m, (o, k) in meta["members"].items()}


def _pack(text, buffer, version=FORMAT_VERSION):
    """A file of the layout of format version 6: prefix, version, length, metadata.json, buffer."""
    text = text.encode() if isinstance(text, str) else text
    return b"MLSIMKIT" + struct.pack("<IQ", version, len(text)) + text + buffer


def _rewrite(path, out, *, meta_edit=None, members_edit=None):
    """Copy a saved file with edited metadata (its state included) / members, its records and hashes
    recomputed as a forger would."""
    _, meta, members = _split(path)
    if members_edit:
        members_edit(members)
    records, offset = {}, 0
    for n, b in members.items():
        records[n] = [offset, len(b)]
        offset += len(b)
    meta["members"] = records
    meta["entries"] = {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}
    if meta_edit:
        meta_edit(meta)
    out.write_bytes(_pack(_reseal(meta), b"".join(members.values())))
    return out


# ---------------------------------------------------------------------------- what a file holds
def test_file_is_metadata_and_arrays_only(boot, tmp_path):
    path = boot.save(tmp_path / "boot.zip")
    data = path.read_bytes()
    raw, meta, members = _split(path)
    state = json.dumps(meta["state"])
    # the layout: b"MLSIMKIT", the format version (u32), the length of metadata.json (u64), its bytes, the buffer
    assert data[:8] == b"MLSIMKIT" and struct.unpack("<IQ", data[8:20]) == (6, len(raw))
    assert list(members) == ["arrays.bin"] and meta["members"] == {"arrays.bin": [0, len(data) - 20 - len(raw)]}
    assert meta["entries"] == {"arrays.bin": hashlib.sha256(members["arrays.bin"]).hexdigest()}
    # arrays are [offset, length, dtype, shape] records into the buffer, 16-byte aligned
    assert '"__array__": [' in state and "pickle" not in state
    first = next(_array_records(meta["state"]))
    assert len(first) == 4 and first[0] % 16 == 0 and isinstance(first[2], str)
    assert meta["magic"] == "mlsimkit-generator" and meta["format_version"] == FORMAT_VERSION == 6
    assert meta["class"] == "SchoolBootstrap" and meta["settings"] == {"replace": True}
    assert meta["schema"] == small_schema_dict(boot) and meta["requires_trust"] is False
    # the schema is stored once: the state refers to the metadata's
    assert meta["state"]["state"]["schema_"] == {"__schema__": boot.schema_.source} and "schema:Column" not in state
    # the content hash is of the bytes before the last two keys, closed with "}"
    head, tail = raw.split(b',"content_sha256":')
    assert meta["content_sha256"] == hashlib.sha256(head + b"}").hexdigest() and list(meta)[-2:] == [
        "content_sha256", "signature"]
    assert isinstance(meta["signature"], str) and len(meta["signature"]) == 64


def small_schema_dict(gen):
    return gen.schema_.to_dict()


def test_round_trip_restores_frames_exactly_and_samples_identically(small, tmp_path):
    pool = SchoolPool(ParametricGenerator(random_slopes={"MathAch": "SES"}).fit(small), pool_size=60,
                      seed=np.random.SeedSequence(5, spawn_key=(1,))).build()
    back = load(pool.save(tmp_path / "pool.zip"))
    for attr in ("parent_", "child_"):
        pd.testing.assert_frame_equal(getattr(back, attr), getattr(pool, attr), check_exact=True)
    np.testing.assert_array_equal(back.counts_, pool.counts_)
    assert back.schema_ == pool.schema_ and back.layout_ == pool.layout_
    assert back.seed.spawn_key == (1,) and back.seed.entropy == 5
    inner = back.generator
    assert isinstance(inner, ParametricGenerator) and inner.get_params() == pool.generator.get_params()
    assert inner.sample(15, seed=2).equals(pool.generator.sample(15, seed=2))
    assert back.sample(30, seed=9).equals(pool.sample(30, seed=9))


# ---------------------------------------------------------------------------- code in a file never runs
def test_old_pickle_that_would_create_a_file_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"magic": "mlsimkit-generator", "format_version": 2, "mlsimkit": "0.1",
                                   "generator": Exploit(target)}))
    with pytest.raises(FormatVersionError, match=r"evil\.pkl'.*format version 2.*unpickling runs code.*retrain"):
        load(evil)
    assert not target.exists()
    pickle.loads(evil.read_bytes())  # the control: unpickling it does create the file
    assert target.exists()


def test_pickle_member_in_an_unsigned_file_is_refused_and_runs_nothing(boot, tmp_path):
    target = tmp_path / "pwned"
    src = boot.save(tmp_path / "boot.zip")

    def add(members):
        members["pickle/00099.pkl"] = pickle.dumps(Exploit(target))

    def point(meta):
        meta["state"]["state"]["payload"] = {"__pickle__": "pickle/00099.pkl"}

    evil = _rewrite(src, tmp_path / "evil.zip", members_edit=add,
                    meta_edit=lambda m: (point(m), m.update(requires_trust=True, signature=None)))
    with pytest.raises(MlsimkitError, match=r"evil\.zip'.*pickled object.*runs code.*trust=True.*trust_model_files"):
        load(evil)
    assert not target.exists()
    # a forged signature does not help; an explicit opt-in does (the control: the payload then runs)
    forged = _rewrite(src, tmp_path / "forged.zip", members_edit=add,
                      meta_edit=lambda m: (point(m), m.update(signature="0" * 64)))
    with pytest.raises(MlsimkitError, match="pickled object"):
        load(forged)
    odd = _rewrite(src, tmp_path / "odd.zip", members_edit=add,
                   meta_edit=lambda m: (point(m), m.update(signature="\u00e9")))
    with pytest.raises(MlsimkitError, match="pickled object"):  # not a TypeError of compare_digest
        load(odd)
    assert not target.exists()
    load(evil, trust=True)
    assert target.exists()


def test_pickle_hidden_in_an_array_member_is_refused_and_runs_nothing(boot, tmp_path):
    """A crafted file that puts its payload under arrays/ (so no member looks pickled, no trust is asked)
    and points a state record at it, with every hash recomputed, must not unpickle anything."""
    target = tmp_path / "pwned"
    src = boot.save(tmp_path / "boot.zip")

    def add(members):
        members["arrays/09999.npy"] = pickle.dumps(Exploit(target))

    def point(meta):
        meta["state"]["state"]["payload"] = {"__pickle__": "arrays/09999.npy"}

    evil = _rewrite(src, tmp_path / "hidden.zip", members_edit=add, meta_edit=point)
    for trust in (False, True):
        with pytest.raises(FormatVersionError, match=r"hidden\.zip'.*pickled record .*arrays/09999\.npy"):
            load(evil, trust=trust)
    assert not target.exists()


# ---------------------------------------------------------------------------- one clear error per bad file
@pytest.mark.parametrize("where", ["header", "metadata", "buffer", "last byte"])
def test_truncated_file(boot, tmp_path, where):
    data = boot.save(tmp_path / "boot.zip").read_bytes()
    n = struct.unpack("<Q", data[12:20])[0]
    keep = {"header": 15, "metadata": 20 + n // 2, "buffer": 20 + n + 100, "last byte": len(data) - 1}[where]
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[:keep])
    what = {"header": "its header", "metadata": "metadata.json"}.get(where, "member arrays.bin")
    with pytest.raises(FormatVersionError, match=rf"cut\.zip'.*truncated or damaged saved generator \({what} ends "
                                                 r"beyond the end of the file\); retrain"):
        load(cut)
    if where != "header":
        with pytest.raises(FormatVersionError, match=r"cut\.zip'.*truncated or damaged"):
            mf.read_metadata(cut) if where == "metadata" else load(cut)


def test_header_longer_than_the_cap_is_refused_before_reading(boot, tmp_path):
    data = boot.save(tmp_path / "boot.zip").read_bytes()
    big = tmp_path / "big.zip"
    big.write_bytes(data[:12] + struct.pack("<Q", 2**40) + data[20:])
    with pytest.raises(FormatVersionError, match=r"big\.zip'.*not a saved mlsimkit generator \(metadata\.json is "
                                                 r"too large: 1099511627776 bytes\)"):
        load(big)


@pytest.mark.parametrize("records, reason", [
    ({"arrays.bin": [0, 10**9]}, "truncated or damaged saved generator \\(member arrays.bin ends beyond"),
    ({"arrays.bin": [0, "x"]}, "a member record that is not \\[offset, length\\]"),
    ({"arrays.bin": [0, 10]}, "bytes after its last member"),
    ({"arrays.bin": [16, 10]}, "arrays.bin not at offset 0"),
    ({"arrays.bin": [0, 64], "pickle/00000.pkl": [32, 64]}, "member pickle/00000.pkl overlaps another"),
])
def test_bad_member_record(boot, tmp_path, records, reason):
    """Member records are checked against the buffer before any member is hashed or read."""
    bad = _rewrite(boot.save(tmp_path / "boot.zip"), tmp_path / "rec.zip",
                   meta_edit=lambda m: m.update(members=records))
    with pytest.raises(FormatVersionError, match=rf"rec\.zip'.*{reason}"):
        load(bad)


def test_other_format_version(boot, tmp_path):
    src = boot.save(tmp_path / "boot.zip")
    raw, meta, members = _split(src)
    # earlier builds' zip archives (3: one .npy member per array; 4: the schema twice, a state.json member;
    # 5: the state in metadata.json): the model cache retrains on this error
    for version in (3, 4, 5):
        old = tmp_path / f"v{version}.zip"
        with zipfile.ZipFile(old, "w") as zf:
            zf.writestr("metadata.json", json.dumps({**meta, "format_version": version, "mlsimkit": "9.0"}))
            zf.writestr("arrays.bin", members["arrays.bin"])
        with pytest.raises(FormatVersionError, match=rf"v{version}\.zip'.*format version {version} \(written by "
                                                     r"mlsimkit 9\.0\).*reads version 6; retrain"):
            load(old)
        with pytest.raises(FormatVersionError, match=rf"format version {version} .*reads version 6; retrain"):
            mf.read_metadata(old)
    # a truncated old archive: still the retrain message
    cut = tmp_path / "v5cut.zip"
    cut.write_bytes((tmp_path / "v5.zip").read_bytes()[:100])
    with pytest.raises(FormatVersionError, match=r"v5cut\.zip'.*format version 3-5\).*reads version 6; retrain"):
        load(cut)
    # a later version, read from the prefix before anything else (and its writer from its metadata)
    later = tmp_path / "v7.zip"
    later.write_bytes(_pack(json.dumps({**meta, "format_version": 7, "mlsimkit": "9.0"}), b"", version=7))
    with pytest.raises(FormatVersionError, match=r"v7\.zip'.*format version 7 \(written by mlsimkit 9\.0\).*"
                                                 r"reads version 6; retrain"):
        load(later)
    # the metadata naming another version than the prefix
    other = _rewrite(src, tmp_path / "mixed.zip", meta_edit=lambda m: m.update(format_version=5, mlsimkit="9.0"))
    with pytest.raises(FormatVersionError, match=r"mixed\.zip'.*format version 5 \(written by mlsimkit 9\.0\)"):
        load(other)


@pytest.mark.parametrize("edit, reason", [
    (lambda rec: rec.__setitem__(2, "|O"), "not \\[offset, length, plain dtype, shape\\]"),   # an object array
    (lambda rec: rec.__setitem__(2, "nonsense"), "not \\[offset, length, plain dtype, shape\\]"),
    (lambda rec: rec.__setitem__(3, [float(n) for n in rec[3]]), "not \\[offset, length, plain dtype, shape\\]"),
    (lambda rec: rec.__setitem__(0, False), "not \\[offset, length, plain dtype, shape\\]"),  # not an int
    (lambda rec: rec.__setitem__(3, {}), "not \\[offset, length, plain dtype, shape\\]"),
    (lambda rec: rec.__setitem__(1, -1), "whose length does not match"),
    (lambda rec: rec.__setitem__(0, 10**9), "beyond the end of arrays.bin"),
    (lambda rec: (rec.__setitem__(3, [10**6]), rec.__setitem__(1, 8 * 10**6)), "beyond the end of arrays.bin"),
])
def test_bad_array_record(boot, tmp_path, edit, reason):
    """An array record is checked against the raw member before any bytes are read: a forged record with
    every hash recomputed cannot name an object dtype or read past the end."""
    src = boot.save(tmp_path / "boot.zip")

    def forge(meta):
        edit(next(_array_records(meta["state"])))

    bad = _rewrite(src, tmp_path / "forged.zip", meta_edit=forge)
    with pytest.raises(FormatVersionError, match=rf"forged\.zip'.*damaged saved generator \(an array record .*{reason}"):
        load(bad)


def test_class_not_on_the_allow_list(boot, tmp_path):
    src = boot.save(tmp_path / "boot.zip")

    def rename(meta):
        meta["state"]["__generator__"] = meta["class"] = "os.system"

    bad = _rewrite(src, tmp_path / "cls.zip", meta_edit=rename)
    with pytest.raises(FormatVersionError, match=r"cls\.zip'.*class 'os\.system' is not on the allow-list"):
        load(bad)
    # an allow-listed top class with a nested object of another class is refused while decoding
    def nested(meta):
        meta["state"]["state"]["x"] = {"__object__": "subprocess:Popen", "state": {}}

    bad2 = _rewrite(src, tmp_path / "nested.zip", meta_edit=nested)
    with pytest.raises(FormatVersionError, match=r"nested\.zip'.*'subprocess:Popen' is not on the allow-list"):
        load(bad2)


def test_schema_mismatch(boot, small, tmp_path):
    path = boot.save(tmp_path / "boot.zip")
    assert load(path, schema=small.schema).sample(5, seed=1).equals(boot.sample(5, seed=1))
    other = ds.load("exam").schema
    with pytest.raises(FormatVersionError, match=r"boot\.zip'.*schema that does not match the study's 'exam'.*"
                                                 r"column 'MEANSES' only in the file"):
        load(path, schema=other)
    changed = small.schema.to_dict()
    changed["tables"]["students"]["columns"]["SES"]["max"] = 99.0
    from mlsimkit.schema import Schema

    with pytest.raises(FormatVersionError, match=r"boot\.zip'.*column 'SES' declared differently"):
        load(path, schema=Schema.from_dict(changed))


def test_modified_content_is_detected(boot, tmp_path):
    path = boot.save(tmp_path / "boot.zip")
    raw, meta, members = _split(path)
    arr = "arrays.bin"
    members[arr] = members[arr][:-8] + bytes(8)  # same size, other values, old hashes kept
    bad = tmp_path / "tampered.zip"

    def write(text, members):
        bad.write_bytes(_pack(text, b"".join(members.values())))

    write(raw, members)
    with pytest.raises(FormatVersionError, match=rf"tampered\.zip'.*content hash mismatch in member {arr}"):
        load(bad)
    members = _split(path)[2]  # the original members
    meta["settings"] = {"replace": False}  # metadata edited without recomputing the hash
    state = meta.pop("state")  # (the same key order as written)
    write(mf._dumps({**{k: v for k, v in meta.items() if k not in ("content_sha256", "signature")},
                     "state": state})[:-1] + mf._trailer(meta["content_sha256"], meta["signature"]), members)
    with pytest.raises(FormatVersionError, match=r"tampered\.zip'.*content hash mismatch in its metadata"):
        load(bad)
    # a key after the hash and signature (which would override one before them when parsed) is refused
    write(raw[:-1] + b',"requires_trust":true}', members)
    with pytest.raises(FormatVersionError, match=r"tampered\.zip'.*content hash mismatch in its metadata"):
        load(bad)
    # a recorded hash that is no hex string (non-ASCII): the same error, not a TypeError
    write(raw[:raw.index(b',"content_sha256":')] + mf._trailer("\u00e9" * 64, None).encode(), members)
    with pytest.raises(FormatVersionError, match=r"tampered\.zip'.*content hash mismatch in its metadata"):
        load(bad)
    write(raw, members)  # the control: the original bytes load
    assert load(bad).sample(5, seed=1).equals(boot.sample(5, seed=1))


def test_foreign_and_missing_files(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a model")
    with pytest.raises(FormatVersionError, match=r"junk\.zip'.*not a saved mlsimkit generator \(it does not start "
                                                 "with MLSIMKIT"):
        load(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FormatVersionError, match=r"other\.zip'.*a zip archive without metadata\.json"):
        load(other)
    with pytest.raises(MlsimkitError, match="saved generator not found"):
        load(tmp_path / "missing.zip")
    with pytest.raises(MlsimkitError, match="holds a SchoolBootstrap, expected a ParametricGenerator"):
        ParametricGenerator.load(SchoolBootstrap().fit(ds.load("hsb")).save(tmp_path / "b.zip"))


def test_signing_key_is_private_and_stable(boot, tmp_path):
    a = _split(boot.save(tmp_path / "a.zip"))[1]
    b = _split(boot.save(tmp_path / "b.zip"))[1]
    assert a["signature"] == b["signature"] and a["content_sha256"] == b["content_sha256"]
    key = mf.key_file()
    assert key.is_file() and oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert key.read_text().strip() not in (tmp_path / "a.zip").read_bytes().decode("latin-1")


def test_codec_round_trips_the_value_types_a_state_holds(tmp_path):
    frame = pd.DataFrame({
        "s": np.array(["a", "b\x00c", "é"], dtype=object),  # a NUL inside: stored element-wise
        "mixed": np.array(["x", None, 2.5], dtype=object),
        "cat": pd.Categorical(["lo", "hi", "lo"], categories=["lo", "hi"], ordered=True),
        "f": [1.5, np.nan, -np.inf], "i": np.array([1, 2, 3], dtype=np.int8), "n": pd.array([1, None, 3], dtype="Int64"),
    }, index=pd.Index(["r1", "r2", "r3"], name="row"))
    state = {"frame": frame, "series": frame["s"], "t": (1, np.float32(2.5), np.int64(7)), "sl": slice(2, 5),
             "inf": float("inf"), 3: [None, True, "x"], "u": np.array(["ab", "c"]),
             "strings": np.array(["k1", "k2", "k3", "k4"], dtype=object).reshape(2, 2)}
    enc = mf._Encoder()
    tree = json.loads(json.dumps(enc.enc(state, "test")))
    back = mf._Decoder(enc.finish(), tmp_path / "x.zip").dec(tree)
    pd.testing.assert_frame_equal(back["frame"], frame, check_exact=True)
    pd.testing.assert_series_equal(back["series"], frame["s"])
    assert back["t"] == (1, np.float32(2.5), np.int64(7)) and type(back["t"][1]) is np.float32
    assert back["sl"] == slice(2, 5) and back["inf"] == float("inf") and back[3] == [None, True, "x"]
    np.testing.assert_array_equal(back["u"], state["u"])
    assert back["strings"].dtype == object and back["strings"].tolist() == [["k1", "k2"], ["k3", "k4"]]
    with pytest.raises(MlsimkitError, match=r"test\['bad'\]: an object of type builtins:function cannot be saved"):
        mf._Encoder().enc({"bad": lambda: 0}, "test")


def test_schema_is_stored_once_and_shared(small, tmp_path):
    """The metadata's schema is a reference in the state (rebuilt equal, with its source, one object per
    source); another schema is stored in full."""
    other = ds.load("exam").schema
    enc = mf._Encoder(small.schema)
    tree = json.loads(json.dumps(enc.enc({"a": small.schema, "b": small.schema, "c": other}, "t")))
    assert tree["a"] == {"__schema__": small.schema.source} and tree["c"]["__object__"] == "mlsimkit.schema:Schema"
    back = mf._Decoder(enc.finish(), tmp_path / "x.zip", schema=small.schema.to_dict()).dec(tree)
    assert back["a"] == small.schema and back["a"].source == small.schema.source and back["a"] is back["b"]
    assert back["c"] == other
    with pytest.raises(FormatVersionError, match=r"x\.zip'.*a schema reference, and no schema in its metadata"):
        mf._Decoder({}, tmp_path / "x.zip").dec(tree)


def test_schemas_reused_within_a_process_stay_exact_and_separate(small, tmp_path):
    """The schema's JSON text is reused between saves only while the schema object is unchanged, and the
    schema validated on load only for the exact text it was built from; every load has its own object."""
    import dataclasses

    gen = SchoolBootstrap().fit(small)
    gen.schema_ = mf._schema_from_dict(small.schema.to_dict(), small.schema.source)  # a schema of its own
    path = gen.save(tmp_path / "a.mlsim")
    first, second = load(path), load(path)
    assert first.schema_ == second.schema_ == small.schema and first.schema_ is not second.schema_
    assert first.schema_.tables is not second.schema_.tables
    assert first.schema_.tables["schools"].columns is not second.schema_.tables["schools"].columns
    first.schema_.tables["schools"].columns.pop("Size")  # (an in-place change of one load's schema)
    assert load(path).schema_ == small.schema
    # the generator's schema changed in place after a save: the next save writes the change
    cols = gen.schema_.tables["schools"].columns
    cols["Size"] = dataclasses.replace(cols["Size"], description="changed")
    gen.save(path)
    assert mf.read_metadata(path)["schema"]["tables"]["schools"]["columns"]["Size"]["description"] == "changed"
    assert load(path).schema_.column("Size").description == "changed"

    def levels(values):
        def edit(meta):
            meta["schema"]["tables"]["schools"]["columns"]["HIMINTY"]["levels"] = values
        return edit

    ints = _rewrite(path, tmp_path / "ints.mlsim", meta_edit=levels([0, 1]))
    assert load(ints).schema_.column("HIMINTY").levels == ("0", "1")  # now cached
    floats = _rewrite(path, tmp_path / "floats.mlsim", meta_edit=levels([0.0, 1.0]))  # == the cached dict
    assert load(floats).schema_.column("HIMINTY").levels == ("0.0", "1.0")


# ---------------------------------------------------------------------------- the file layer
def test_metadata_is_read_without_the_buffer(boot, tmp_path):
    path = boot.save(tmp_path / "boot.zip")
    data = path.read_bytes()
    n = struct.unpack("<Q", data[12:20])[0]
    path.write_bytes(data[:20 + n])  # the buffer cut off: the metadata alone still reads
    assert mf.read_metadata(path)["class"] == "SchoolBootstrap"


@pytest.mark.parametrize("where", ["arrays", "metadata", "prefix", "version"])
def test_damaged_byte_is_refused(boot, tmp_path, where):
    path = boot.save(tmp_path / "boot.zip")
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[12:20])[0]
    i = {"arrays": 20 + n + 100,  # a flipped bit inside arrays.bin: its hash no longer matches
         "metadata": data.index(b'"replace":true') + 3,  # inside the state: the content hash no longer matches
         "prefix": 2, "version": 8}[where]
    data[i] ^= 0x01
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    reason = {"arrays": "content hash mismatch in member arrays.bin", "metadata": "content hash mismatch in its metadata",
              "prefix": "it does not start with MLSIMKIT", "version": "format version 7 .*reads version 6"}[where]
    with pytest.raises(FormatVersionError, match=rf"bad\.zip'.*{reason}"):
        load(bad)


def test_overlapping_array_records_are_refused(boot, tmp_path):
    """Two array records sharing bytes (every hash recomputed) are refused while decoding."""
    def forge(meta):
        a, b = [r for r in _array_records(meta["state"]) if r[1] > 0][:2]
        b[0] = a[0] + 8 if a[1] > 8 else a[0]
        if a[1] <= 8:
            b[:] = a

    bad = _rewrite(boot.save(tmp_path / "boot.zip"), tmp_path / "overlap.zip", meta_edit=forge)
    with pytest.raises(FormatVersionError, match=r"overlap\.zip'.*an array record overlapping another one"):
        load(bad)


def test_a_replaced_key_is_read_again(boot, tmp_path):
    a = _split(boot.save(tmp_path / "a.zip"))[1]
    key = mf.key_file()
    new = tmp_path / "new-key"
    new.write_text("ab" * 32)
    os.replace(new, key)  # another file under the same name (as a user replacing the key would)
    b = _split(boot.save(tmp_path / "b.zip"))[1]
    assert a["content_sha256"] == b["content_sha256"] and a["signature"] != b["signature"]
    assert b["signature"] == mf._sign(b["content_sha256"], bytes.fromhex("ab" * 32))


def test_write_bytes_is_atomic(tmp_path):
    from mlsimkit.io import write_bytes

    target = tmp_path / "sub" / "f.bin"
    deeper = tmp_path / "a" / "b" / "g.bin"  # missing folders are created; any C-contiguous buffer is written
    assert write_bytes(deeper, np.arange(3, dtype="<i8")) == deeper and deeper.read_bytes() == np.arange(3).astype("<i8").tobytes()
    if os.name == "posix":
        assert deeper.stat().st_mode & 0o777 == 0o600
    assert write_bytes(target, b"one") == target and target.read_bytes() == b"one"

    class Boom:  # a bytes-like whose write fails midway
        def __buffer__(self, flags):
            raise OSError("disk full")

    with pytest.raises((OSError, TypeError)):
        write_bytes(target, Boom())
    assert target.read_bytes() == b"one"  # the old content, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temporary file left
