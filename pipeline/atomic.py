"""Replace a file atomically: readers see the old file or the whole new one, never half of one
(docs/style.md#data-and-failures).

    with atomic_write(path) as tmp:    # tmp: a new, unique path in path's folder
        df.to_csv(tmp)                 # write it any way: open(), a library, an encoder
    # path is now the new file. If the block raised, path is untouched and tmp is gone.

The temp file sits in path's folder because os.replace is atomic only within one file system. Its name,
".<name>.partial-<host>-<pid>-<random><suffix>", is unique across processes and hosts (DDP ranks on several
nodes may write the same file on a shared file system), hidden, and ends in path's suffix, so writers that pick
a format by suffix (matplotlib, PyAV) still work. prepare_data.py removes what killed runs left by the ".partial"
in the name (prepare.run.remove_partials).

A killed process cannot leave a half file under the final name; a power cut or kernel crash can, unless the
data reaches the disk before the rename: fsync=True does that (checkpoints), at the cost of waiting for the disk.

A full disk (ENOSPC, a quota's EDQUOT, a file size limit's EFBIG) leaves the old file too, and atomic_write raises
NoSpace, whose message names the file being written (not the temp file) and the space free there: the writers'
own messages ("[Errno 28] No space left on device", torch's "unexpected pos ...") name neither.

Standard library only: prepare's workers and engine/ import it without pandas or torch.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class NoSpace(OSError):
    """Writing a file failed for want of space. str(exc) is one line: the file, the error, the space it needs
    (when the writer knows) and the space free on its disk. An OSError with the original errno, so callers that
    catch OSError still do."""

    reason: str  # the system's words for the errno: "No space left on device", "File too large", ...

    @classmethod
    def at(cls, path: str | Path, error: OSError, needed: int | None = None) -> NoSpace:
        """The NoSpace for `error` (errno in NO_SPACE_ERRNOS, or a NoSpace) while writing path; needed: the
        file's size in bytes, when known. Call it once the partial file is gone: "free" counts what it held."""
        path = Path(path)
        reason = getattr(error, "reason", None) or error.strerror or os.strerror(error.errno)
        free = free_bytes(path.parent)
        space = [f"it needs {human_bytes(needed)}"] if needed is not None else []
        space += [f"{human_bytes(free)} free on its disk"] if free is not None else []
        e = cls(error.errno, f"{path}: {reason}" + (f" ({', '.join(space)})" if space else ""))
        e.reason = reason
        return e

    def __str__(self) -> str:
        return str(self.strerror)


def no_space_error(e: BaseException | None) -> OSError | None:
    """The OSError of a write that failed for want of space (a full disk, a quota, a file size limit) if e is one
    or was raised while handling one, else None. Writers may mask it: torch.save's zip writer, closing after the
    failed write, raises a RuntimeError ("unexpected pos") whose __context__ is the OSError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def free_bytes(folder: Path) -> int | None:
    """Bytes free for this user on folder's file system (of folder's nearest existing ancestor); None if unknown."""
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def human_bytes(n: int) -> str:
    """1000 -> '1000 bytes', 1536 -> '1.5 KiB', 734003200 -> '700.0 MiB'."""
    if n < 1024:
        return f"{n} bytes"
    exponent = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def temp_path(path: Path) -> Path:
    """A fresh temp name for path, in path's folder (see the module docstring)."""
    token = f"{os.uname().nodename}-{os.getpid()}-{os.urandom(4).hex()}"
    return path.with_name(f".{path.name}.partial-{token}{path.suffix}")


@contextmanager
def atomic_write(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write path's new content to; on leaving the block without an exception, rename it
    onto path (os.replace). On an exception the temp file is removed and path is left as it was.

    fsync: flush the temp file's data to the disk before the rename (survives a power cut, not only a crash).
    The caller must have closed the file by the end of the block. A write that fails for want of space (in the
    block, or the fsync) raises NoSpace naming path.
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
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # first: the space it held counts in NoSpace's "free"
        cause = no_space_error(e)
        if cause is not None and not isinstance(e, NoSpace):
            raise NoSpace.at(path, cause) from e
        raise
