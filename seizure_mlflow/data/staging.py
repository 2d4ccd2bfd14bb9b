"""Write a folder completely or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def staged_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``.

    When the block ends normally the folder replaces ``destination`` (whatever was there is removed);
    when it raises, the temporary folder is removed and ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if destination.exists():
        shutil.rmtree(destination)
    os.replace(tmp, destination)
