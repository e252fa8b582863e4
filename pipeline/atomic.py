"""Replace a file atomically: readers see the old file or the whole new one, never half of one (style.md 9).

    with atomic_write(path) as tmp:    # tmp: a new, unique path in path's folder
        df.to_csv(tmp)                 # write it any way: open(), a library, an encoder
    # path is now the new file. If the block raised, path is untouched and tmp is gone.

The temp file sits in path's folder because os.replace is atomic only within one file system. Its name,
".<name>.partial-<host>-<pid>-<random><suffix>", is unique across processes and hosts (DDP ranks on several
nodes may write the same file on a shared file system), hidden, and ends in path's suffix, so writers that pick
a format by suffix (matplotlib, PyAV) still work. prepare_data.py removes what killed runs left by the ".partial"
in the name (pipeline.prepare.run.remove_partials).

A killed process cannot leave a half file under the final name; a power cut or kernel crash can, unless the
data reaches the disk before the rename: fsync=True does that (checkpoints), at the cost of waiting for the disk.

Standard library only: pipeline.prepare's workers and engine/ import it without pandas or torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A fresh temp name for path, in path's folder (see the module docstring)."""
    token = f"{os.uname().nodename}-{os.getpid()}-{os.urandom(4).hex()}"
    return path.with_name(f".{path.name}.partial-{token}{path.suffix}")


@contextmanager
def atomic_write(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write path's new content to; on leaving the block without an exception, rename it
    onto path (os.replace). On an exception the temp file is removed and path is left as it was.

    fsync: flush the temp file's data to the disk before the rename (survives a power cut, not only a crash).
    The caller must have closed the file by the end of the block.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)  # fsync through any descriptor flushes the file's data
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
