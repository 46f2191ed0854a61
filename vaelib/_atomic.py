"""Atomic file writes: the one implementation behind every file vaelib and its scripts write.

Checkpoints (train.save_checkpoint), the command line's outputs, figures (plotting.savefig), widget
caches, dataset downloads (data.py, suffix ".part"), executed notebooks (scripts/run_notebooks.py)
and benchmark results all go through `atomic_file` (or its callback form `atomic_write`). The bytes
go into a temporary file ".<name>.<random><suffix>" beside the final file, which is flushed,
fsync'ed and renamed over `path` with os.replace only when the writer finishes, so `path` is always
the old file or the complete new one. On top of that:
- the temporary file holds an exclusive flock while it is written; a temporary file of the same name
  pattern that nobody holds a lock on was left by a killed process, and is removed at the next
  write;
- the new file keeps the permissions of the file it replaces; a new file gets 0666 minus the umask
  (0644 under the usual umask 022), not mkstemp's 0600;
- when `path` is a symbolic link, the link's target is replaced and the link kept.
"""

import contextlib
import os
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; orphans are recognised by age instead
    fcntl = None

# Without flock, a temporary file untouched for this long is taken to be an orphan.
ORPHAN_AGE_S = 24 * 3600.0


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def clean_orphans(directory, prefix, suffix):
    """Remove the temporary files `directory/<prefix>*<suffix>` left by killed writers; return their
    paths.

    A file whose writer is alive is locked (flock) and kept. Errors (a file already gone, no
    permission, no flock on this file system) leave the file alone: cleaning is best effort and
    never fails the write that triggered it.
    """
    removed = []
    try:
        candidates = [
            p
            for p in Path(directory).iterdir()
            if p.name.startswith(prefix) and p.name.endswith(suffix)
        ]
    except OSError:
        return removed
    for p in candidates:
        try:
            if fcntl is None:
                if time.time() - p.stat().st_mtime > ORPHAN_AGE_S:
                    p.unlink()
                    removed.append(p)
                continue
            with open(p, "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer holds it
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_file(path, suffix=".tmp", mode="wb"):
    """Context manager yielding (open temporary file, its Path); on a normal exit the file replaces
    `path`.

    The block may read the temporary file back (flush first) and raise to reject it: any exception
    (KeyboardInterrupt included) removes the temporary file and leaves `path` untouched.

    Args:
        path: destination; its directory (after following links) must exist.
        suffix: ends the temporary file's name (".part" for downloads); orphans are found by it.
        mode: "wb", or "w" for text (UTF-8).
    """
    path = Path(os.path.realpath(path))  # a symbolic link: write where it points, the link stays
    prefix = f".{path.name}."
    clean_orphans(path.parent, prefix, suffix)
    try:
        perms = os.stat(path).st_mode & 0o7777
    except OSError:
        perms = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    tmp = Path(tmp)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            if fcntl is not None:
                with contextlib.suppress(
                    OSError
                ):  # a file system without flock: write all the same
                    fcntl.flock(f, fcntl.LOCK_EX)  # held until the file is closed, after the rename
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, perms)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path, write, mode="wb", suffix=".tmp"):
    """`atomic_file` for a callback: `write(f)` writes into the temporary file, which then replaces
    `path`."""
    with atomic_file(path, suffix, mode) as (f, _):
        write(f)
