"""The saved-generator format (version 5): JSON metadata + numpy arrays; loading runs no code from the file."""

import hashlib
import json
import os
import pickle
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


def _rewrite(path, out, *, meta_edit=None, members_edit=None):
    """Copy a saved file with edited metadata (its state included) / members, its hashes recomputed as a
    forger would."""
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("metadata.json"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "metadata.json"}
    if members_edit:
        members_edit(members)
    meta["entries"] = {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}
    if meta_edit:
        meta_edit(meta)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("metadata.json", _reseal(meta))
        for n, b in members.items():
            zf.writestr(n, b)
    return out


# ---------------------------------------------------------------------------- what a file holds
def test_file_is_metadata_and_arrays_only(boot, tmp_path):
    path = boot.save(tmp_path / "boot.zip")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        raw = zf.read("metadata.json")
    meta = json.loads(raw)
    state = json.dumps(meta["state"])
    assert names == ["metadata.json", "arrays.bin"]
    assert '"__array__": [' in state and "pickle" not in state  # arrays are [offset, dtype, shape] records
    assert meta["magic"] == "mlsimkit-generator" and meta["format_version"] == FORMAT_VERSION == 5
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
def test_truncated_file(boot, tmp_path):
    data = boot.save(tmp_path / "boot.zip").read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatVersionError, match=r"cut\.zip'.*truncated or damaged"):
        load(cut)


def test_other_format_version(boot, tmp_path):
    src = boot.save(tmp_path / "boot.zip")
    # earlier builds' files (3: one .npy member per array; 4: the schema twice, a state.json member) and a
    # later one: the model cache retrains on this error
    for version in (3, 4, 6):
        old = _rewrite(src, tmp_path / f"v{version}.zip",
                       meta_edit=lambda m: m.update(format_version=version, mlsimkit="9.0"))
        with pytest.raises(FormatVersionError, match=rf"v{version}\.zip'.*format version {version} \(written by "
                                                     r"mlsimkit 9\.0\).*reads version 5; retrain"):
            load(old)


@pytest.mark.parametrize("edit, reason", [
    (lambda rec: rec.__setitem__(1, "|O"), "not \\[offset, plain dtype, shape\\]"),   # an object array
    (lambda rec: rec.__setitem__(1, "nonsense"), "not \\[offset, plain dtype, shape\\]"),
    (lambda rec: rec.__setitem__(0, 10**9), "beyond the end of arrays.bin"),
    (lambda rec: rec.__setitem__(2, [10**6]), "beyond the end of arrays.bin"),
])
def test_bad_array_record(boot, tmp_path, edit, reason):
    """An array record is checked against the raw member before any bytes are read: a forged record with
    every hash recomputed cannot name an object dtype or read past the end."""
    src = boot.save(tmp_path / "boot.zip")

    def forge(meta):
        state = meta["state"]

        def first_array(x):
            if isinstance(x, dict):
                if "__array__" in x:
                    return x["__array__"]
                x = list(x.values())
            if isinstance(x, list):
                for v in x:
                    found = first_array(v)
                    if found is not None:
                        return found
            return None

        edit(first_array(state))

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
    with zipfile.ZipFile(path) as zf:
        raw = zf.read("metadata.json")
        members = {n: zf.read(n) for n in zf.namelist() if n != "metadata.json"}
    meta = json.loads(raw)
    arr = "arrays.bin"
    members[arr] = members[arr][:-8] + bytes(8)  # same size, other values, old hashes kept
    bad = tmp_path / "tampered.zip"

    def write(text, members):
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("metadata.json", text)
            for n, b in members.items():
                zf.writestr(n, b)

    write(raw, members)
    with pytest.raises(FormatVersionError, match=rf"tampered\.zip'.*content hash mismatch in member {arr}"):
        load(bad)
    members = {n: zipfile.ZipFile(path).read(n) for n in members}  # the original members
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
    with pytest.raises(FormatVersionError, match=r"junk\.zip'.*not a saved mlsimkit generator \(not a zip"):
        load(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FormatVersionError, match=r"other\.zip'.*no metadata\.json"):
        load(other)
    with pytest.raises(MlsimkitError, match="saved generator not found"):
        load(tmp_path / "missing.zip")
    with pytest.raises(MlsimkitError, match="holds a SchoolBootstrap, expected a ParametricGenerator"):
        ParametricGenerator.load(SchoolBootstrap().fit(ds.load("hsb")).save(tmp_path / "b.zip"))


def test_signing_key_is_private_and_stable(boot, tmp_path):
    a = json.loads(zipfile.ZipFile(boot.save(tmp_path / "a.zip")).read("metadata.json"))
    b = json.loads(zipfile.ZipFile(boot.save(tmp_path / "b.zip")).read("metadata.json"))
    assert a["signature"] == b["signature"] and a["content_sha256"] == b["content_sha256"]
    key = mf.key_file()
    assert key.is_file() and oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert key.read_text().strip() not in zipfile.ZipFile(tmp_path / "a.zip").read("metadata.json").decode()


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


# ---------------------------------------------------------------------------- the archive layer
def test_archive_is_a_standard_zip_and_other_zips_still_load(boot, tmp_path):
    path = boot.save(tmp_path / "boot.zip")
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every CRC right, as any zip tool checks
        members = {n: zf.read(n) for n in zf.namelist()}
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    # the same members compressed (not what write() makes): still loads, the same generator
    other = tmp_path / "deflated.zip"
    with zipfile.ZipFile(other, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    assert load(other).sample(5, seed=1).equals(boot.sample(5, seed=1))


@pytest.mark.parametrize("where", ["arrays", "metadata", "directory"])
def test_damaged_byte_is_refused(boot, tmp_path, where):
    path = boot.save(tmp_path / "boot.zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        member = {"arrays": "arrays.bin", "metadata": "metadata.json"}.get(where)
        start = zf.getinfo(member).header_offset + 30 + len(member) if member else None
    if where == "arrays":  # a flipped bit inside arrays.bin: its hash no longer matches
        i = start + 100
    elif where == "metadata":  # inside a string of metadata.json: its CRC no longer matches
        i = data.index(b"mlsimkit-generator", start) + 3
    else:  # the central directory's record of metadata.json's CRC (the first entry)
        i = data.index(b"PK\x01\x02") + 16
    data[i] ^= 0x01
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    # arrays.bin: refused by its SHA-256 (or zipfile's CRC); metadata and directory: by zipfile's checks
    with pytest.raises(FormatVersionError, match=r"bad\.zip'.*(damaged|content hash mismatch in member arrays)"):
        load(bad)


def test_a_replaced_key_is_read_again(boot, tmp_path):
    a = json.loads(zipfile.ZipFile(boot.save(tmp_path / "a.zip")).read("metadata.json"))
    key = mf.key_file()
    new = tmp_path / "new-key"
    new.write_text("ab" * 32)
    os.replace(new, key)  # another file under the same name (as a user replacing the key would)
    b = json.loads(zipfile.ZipFile(boot.save(tmp_path / "b.zip")).read("metadata.json"))
    assert a["content_sha256"] == b["content_sha256"] and a["signature"] != b["signature"]
    assert b["signature"] == mf._sign(b["content_sha256"], bytes.fromhex("ab" * 32))


def test_write_bytes_is_atomic(tmp_path):
    from mlsimkit.io import write_bytes

    target = tmp_path / "sub" / "f.bin"
    assert write_bytes(target, b"one") == target and target.read_bytes() == b"one"

    class Boom:  # a bytes-like whose write fails midway
        def __buffer__(self, flags):
            raise OSError("disk full")

    with pytest.raises((OSError, TypeError)):
        write_bytes(target, Boom())
    assert target.read_bytes() == b"one"  # the old content, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temporary file left
