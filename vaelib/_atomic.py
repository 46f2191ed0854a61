"""Atomic file writes for dataset downloads (data.py); train.atomic_write does the same for checkpoints.

`atomic_file(path, suffix)` writes into a temporary file ".<name>.<random><suffix>" beside the final file
and renames it over `path` with os.replace only when the caller's block finishes, so `path` is always the
old file or the complete new one. On top of that:
- the temporary file holds an exclusive flock while it is written; a temporary file of the same name
  pattern that nobody holds a lock on was left by a killed process, and is removed at the next write;
- the new file gets ordinary permissions, 0666 minus the umask (0644 under the usual umask 022), not
  mkstemp's 0600;
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


def resolve(path):
    """`path` with symbolic links followed, so that replacing it keeps the link."""
    return Path(os.path.realpath(path))


def clean_orphans(directory, prefix, suffix):
    """Remove the temporary files `directory/<prefix>*<suffix>` left by killed writers; return their paths.

    A file whose writer is alive is locked (flock) and kept. Errors (a file already gone, no permission)
    leave the file alone: cleaning is best effort and never fails the write that triggered it.
    """
    removed = []
    try:
        candidates = [p for p in Path(directory).iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
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
def atomic_file(path, suffix, mode="wb"):
    """Context manager yielding (open temporary file, its Path); on a normal exit the file replaces `path`.

    The block may read the temporary file back (flush first) and raise to reject it: any exception removes
    the temporary file and leaves `path` untouched. The directory of `path` (after following links) must
    exist.
    """
    path = resolve(path)
    prefix = f".{path.name}."
    clean_orphans(path.parent, prefix, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    tmp = Path(tmp)
    try:
        with os.fdopen(fd, mode) as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)  # held until the file is closed, after the rename
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
