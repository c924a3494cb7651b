"""File helpers shared by every writer of the project.

``atomic_write`` is the one way a file is replaced on disk: the content goes to a temporary file in the
same folder, is flushed to the disk, and only then takes the final name (``os.replace`` is atomic on one
file system). A reader sees the old file or the new one, never half of one; after any error, including
Ctrl-C, the temporary file is gone and the old file is untouched.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import uuid
from collections.abc import Callable
from pathlib import Path

Content = bytes | bytearray | memoryview | str | Callable[[Path], object]


def temporary_path(path: str | Path) -> Path:
    """A fresh hidden name next to ``path`` that keeps its extension (``.a.mp4.1f2e3d4c.tmp.mp4``):
    writers that pick a format by extension (PyAV, OpenCV) still see the right one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (not supported on every platform: best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, content: Content, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` atomically with ``content`` and return ``path``.

    ``content`` is bytes, text (encoded with ``encoding``), or a function that writes the file it is
    given (``lambda tmp: torch.save(obj, tmp)``, ``lambda tmp: save_file(tensors, tmp)``). The parent
    folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        if callable(content):
            content(tmp)
            if not tmp.exists():
                raise RuntimeError(f"atomic_write({path}): the writer function did not create the file it was "
                                   f"given ({tmp.name}); it must write to that path")
        else:
            data = content.encode(encoding) if isinstance(content, str) else bytes(content)
            with open(tmp, "xb") as fh:
                fh.write(data)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave a temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def worker_pool_context() -> multiprocessing.context.BaseContext:
    """The start method of the project's worker pools (frame store, generator, compress): ``spawn``, never a
    ``fork`` of the caller. A process that already runs threads (torch's pools, FFmpeg's, a test runner's) can
    hold a lock at the moment of a fork, and the child then waits on it forever (seen with PyAV in a long test
    session). Spawned workers are the caller's own children (their CPU time counts in its RUSAGE_CHILDREN, as
    forkserver's grandchildren's would not) and get their settings as arguments; each imports the package once
    (about a second), which is small next to the work of a pool."""
    return multiprocessing.get_context("spawn")
