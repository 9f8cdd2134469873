"""A study killed with SIGKILL midway and resumed equals an uninterrupted run: nothing lost or duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from functools import partial

from mlsimkit.simulate import Design, run
from mlsimkit.simulate import examples as ex

REPS, BLOCK = 40, 4
DESIGN = {"n": [10, 20]}
SCRIPT = textwrap.dedent(
    """
    import sys
    from functools import partial
    from mlsimkit.simulate import Design, run
    from mlsimkit.simulate import examples as ex
    run(Design({design!r}), ex.normal_sample,
        {{"mean": partial(ex.mean_t_interval, sleep=0.03), "boot": ex.trimmed_mean_bootstrap}},
        reps={reps}, seed=7, store=sys.argv[1], block_size={block})
    """
)


def methods():
    return {"mean": partial(ex.mean_t_interval, sleep=0.0), "boot": ex.trimmed_mean_bootstrap}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path):
    store = tmp_path / "sim"
    script = tmp_path / "study.py"
    script.write_text(SCRIPT.format(design=DESIGN, reps=REPS, block=BLOCK))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(store)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    total = len(DESIGN["n"]) * REPS // BLOCK
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            done = list((store / "shards").glob("*/*.parquet")) if store.exists() else []
            if len(done) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the study ended before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = list((store / "shards").glob("*/*.parquet"))
    assert 3 <= len(written) < total, "the kill should leave the study part-done"

    resumed = run(Design(DESIGN), ex.normal_sample, methods(), reps=REPS, seed=7, store=store)
    fresh = run(Design(DESIGN), ex.normal_sample, methods(), reps=REPS, seed=7)
    cols = [c for c in fresh.columns if c != "fit_time"]
    pd.testing.assert_frame_equal(resumed[cols], fresh[cols], check_exact=True)
    keys = resumed[["condition", "rep", "method"]]
    assert not keys.duplicated().any()
    assert len(keys) == len(DESIGN["n"]) * REPS * 2
    assert sorted(resumed.groupby("condition")["rep"].unique().map(sorted).iloc[0]) == list(range(REPS))
    assert len(list((store / "shards").glob("*/*.parquet"))) == total
    assert not list(store.rglob("*.tmp")) and not (store / ".lock").exists()
