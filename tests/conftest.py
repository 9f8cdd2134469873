"""Test-suite hygiene: the tests leave nothing behind in the working tree.

``make test`` followed by ``make book`` once failed because the tests had left ``.pytest_cache/`` (whose
README.md the ``-W`` book build then read as a stray page) and ``kernel-ipc-*`` socket files in the project
root. pytest's cache is switched off (``-p no:cacheprovider`` in pyproject.toml), hypothesis keeps no example
database, notebook kernels write no bytecode, and every test writes under ``tmp_path``. This hook checks it:
the entries that ``git status --porcelain --ignored`` shows at the end of the session must all have been there
at its start, apart from ``.venv/`` and Python's bytecode caches (``make test`` sets PYTHONDONTWRITEBYTECODE,
so from a fresh clone there are none); anything new fails the session and is listed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = (".venv/",)

sys.dont_write_bytecode = True
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # notebook kernels and other child processes
settings.register_profile("mlsimkit", database=None)
settings.load_profile("mlsimkit")
# hypothesis also caches what it learns from the code under .hypothesis/ in the working directory
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="mlsimkit-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def working_tree_entries(root: Path = ROOT) -> set[str] | None:
    """``git status --porcelain --ignored`` of ``root`` as a set of lines (None outside a git checkout)."""
    if shutil.which("git") is None or not (root / ".git").exists():
        return None
    proc = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=root,
                          capture_output=True, text=True)
    return set(proc.stdout.splitlines()) if proc.returncode == 0 else None


def new_entries(before: set[str], after: set[str]) -> list[str]:
    """Entries of ``after`` not in ``before`` and not under an allowed folder."""
    return sorted(e for e in after - before
                  if not any(e[3:].startswith(a) for a in ALLOWED) and "__pycache__/" not in e)


def pytest_sessionstart(session):
    session.config._tree_before = working_tree_entries()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)
    before = getattr(session.config, "_tree_before", None)
    after = working_tree_entries() if before is not None else None
    if after is None:
        return
    left = new_entries(before, after)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "the tests left files in the working tree:\n  " + "\n  ".join(left)
        if reporter:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
