"""Atomic file writing: write to a temporary file beside the target, then rename.

A failure midway never leaves a half-written file under the target's name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


#: how a temporary file of :func:`write_bytes` is created: new (never an existing file or a link), private
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0)


def _create_temporary(folder: str, name: str) -> tuple[int, str]:
    """A new file ``<folder>/.<name>.<random>.tmp`` (mode 0600, as :func:`tempfile.mkstemp` makes it) and its
    descriptor; the folder is created only when missing."""
    for attempt in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _CREATE, 0o600), tmp
        except FileExistsError:  # a name drawn twice: draw again
            continue
        except FileNotFoundError:
            if attempt:
                raise
            os.makedirs(folder, exist_ok=True)
    raise FileExistsError(f"no free temporary name for '{name}' in '{folder}'")


def write_bytes(target: str | Path, data) -> Path:
    """Atomically write the bytes-like ``data`` to ``target``: written to a new temporary file beside it
    (:func:`os.write` on its descriptor, no file object; a random name drawn directly, since
    :func:`tempfile.mkstemp`'s Python costs a fifth of a small file's write), then :func:`os.replace`; no
    temporary file is left behind on failure."""
    target = Path(target)
    folder, name = os.path.split(os.fspath(target))
    fd, tmp = _create_temporary(folder or os.curdir, name)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def write_text(target: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)
