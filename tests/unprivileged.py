"""Permission denials that hold even when the tests run as root.

Root ignores permission bits, so a `chmod 000` folder is still readable to a
root test process. `as_nobody()` drops the process's effective user and
group to `nobody` for a block (root can take them back), so the kernel
denies what the bits deny; for other users it changes nothing. Paths used
inside the block must be reachable by `nobody`: `open_folder()` makes one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@contextlib.contextmanager
def open_folder() -> Iterator[Path]:
    """A fresh folder that every user can enter and read (mode 755)."""
    folder = Path(tempfile.mkdtemp(prefix="tgc-permissions-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in (folder, *folder.rglob("*")):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(folder)
