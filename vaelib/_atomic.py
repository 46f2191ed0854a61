"""Atomic file writes: the one implementation behind every file vaelib and its scripts write.

Checkpoints (train.save_checkpoint), the command line's outputs, figures (plotting.savefig), widget
caches, dataset downloads (data.py, suffix ".part"), executed notebooks (scripts/run_notebooks.py)
and benchmark results all go through `atomic_file` (or its callback form `atomic_write`). The bytes
go into a temporary file ".<name>.<random><suffix>" beside the final file, which is flushed,
fsync'ed and renamed over `path` with os.replace only when the writer finishes, so `path` is always
the old file or the complete new one. On top of that:
- the temporary file holds an exclusive flock from its creation until the rename: it is created
  while the writer holds a shared flock on the directory, which the cleaner takes exclusively, so a
  temporary file of the same name pattern that the cleaner can lock was provably left by a killed
  process, and is removed at the next write (a cleaner that cannot lock the directory at once skips
  cleaning; only regular files are ever opened: a FIFO or device of that name is left alone);
- `path` must be a regular file or not exist: a directory, FIFO or device node is refused, never
  replaced;
- a full disk (ENOSPC, EDQUOT, EFBIG) is an OSError of one line that names the file and says the
  previous file is intact;
- the new file keeps the permissions of the file it replaces; a new file gets 0666 minus the umask
  (0644 under the usual umask 022), not mkstemp's 0600;
- when `path` is a symbolic link, the link's target is replaced and the link kept.
"""

import contextlib
import errno
import os
import stat
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


@contextlib.contextmanager
def _directory_lock(directory, exclusive):
    """Hold a flock on `directory` (shared for creating a temporary file, exclusive for cleaning).

    Yields True when held, False when the directory cannot be locked (no flock there, or exclusive
    and busy: the cleaner never waits).
    """
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield False
        return
    try:
        held = _flock_within(
            fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, 0 if exclusive else 10
        )
        yield held
    finally:
        os.close(fd)  # releases the lock


def _flock_within(fd, operation, seconds):
    """Try the flock `operation` without blocking, retrying for up to `seconds`; True when held.

    Never a blocking flock: a cleaner holds the directory only for a moment, and a lock this very
    process still holds through another descriptor (an interrupted cleanup) must not hang the
    write; after `seconds` the writer goes on unlocked, as on a file system without flock."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        except OSError:
            return False


def clean_orphans(directory, prefix, suffix):
    """Remove the temporary files `directory/<prefix>*<suffix>` left by killed writers; return their
    paths.

    Only provably abandoned files go: the cleaner holds the directory's flock exclusively (no writer
    is between creating and locking its file) and takes the file's own flock (no writer holds it).
    A file that is not a regular file (a FIFO, a device, a link) is never opened. Errors (a file
    already gone, no permission, no flock on this file system, a busy directory) leave files alone:
    cleaning is best effort and never fails the write that triggered it.
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
    if not candidates:
        return removed
    with _directory_lock(directory, exclusive=True) as held:
        if fcntl is not None and not held:
            return removed  # a writer is creating its file right now: clean next time
        for p in candidates:
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue  # a FIFO would block open(); a device or link is not ours
                if fcntl is None:
                    if time.time() - p.stat().st_mtime > ORPHAN_AGE_S:
                        p.unlink()
                        removed.append(p)
                    continue
                flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(p, flags)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        continue  # replaced between lstat and open
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live writer holds it
                    p.unlink()
                    removed.append(p)
                finally:
                    os.close(fd)
            except OSError:
                continue
    return removed


# errno values of a full disk or quota, or a file-size limit
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def check_regular(path, what="file"):
    """Raise an OSError naming `path` when it exists and is not a regular file (after following
    links)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(
            errno.EISDIR, f"cannot write {what} {path}: it is a directory; name a file"
        )
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise OSError(
            errno.EEXIST,
            f"cannot write {what} {path}: it exists and is {kind}, not a regular file; refusing to "
            "replace it (name a regular file)",
        )


@contextlib.contextmanager
def atomic_file(path, suffix=".tmp", mode="wb", what="file"):
    """Context manager yielding (open temporary file, its Path); on a normal exit the file replaces
    `path`.

    The block may read the temporary file back (flush first) and raise to reject it: any exception
    (KeyboardInterrupt included) removes the temporary file and leaves `path` untouched.

    Args:
        path: destination; its directory (after following links) must exist; it must be a regular
            file or not exist.
        suffix: ends the temporary file's name (".part" for downloads); orphans are found by it.
        mode: "wb", or "w" for text (UTF-8).
        what: what the file is, for error messages ("checkpoint").
    Raises:
        OSError: `path` is not a regular file; the disk is full (one line naming `path`).
    """
    shown = path
    path = Path(os.path.realpath(path))  # a symbolic link: write where it points, the link stays
    check_regular(path, what)
    prefix = f".{path.name}."
    clean_orphans(path.parent, prefix, suffix)
    try:
        perms = os.stat(path).st_mode & 0o7777
        existed = True
    except OSError:
        perms, existed = 0o666 & ~_umask(), False
    fd = tmp = f = None
    try:
        # created under the directory's shared lock and locked before it is released: a cleaner
        # (which holds the directory exclusively) never sees this file unlocked
        with _directory_lock(path.parent, exclusive=False):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
            if fcntl is not None:
                with contextlib.suppress(OSError):  # a file system without flock: write anyway
                    fcntl.flock(
                        fd, fcntl.LOCK_EX
                    )  # held until the file is closed, after the rename
        tmp = Path(tmp)
        f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
        yield f, tmp
        f.flush()
        os.fsync(f.fileno())
        os.chmod(tmp, perms)
        check_regular(path, what)  # not replaced by a FIFO or device meanwhile
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in _FULL:
            raise
        before = (
            f"the previous {what} {shown} is intact"
            if existed
            else f"no {what} was written at {shown}"
        )
        raise OSError(
            e.errno,
            f"cannot write {what} {shown}: {os.strerror(e.errno).lower()} (the disk is full or a "
            f"size limit is reached); {before}. Free some space and try again",
        ) from None
    finally:
        if f is not None:
            with contextlib.suppress(OSError):  # a full disk fails the close's flush too
                f.close()
        elif fd is not None:
            os.close(fd)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write(path, write, mode="wb", suffix=".tmp", what="file"):
    """`atomic_file` for a callback: `write(f)` writes into the temporary file, which then replaces
    `path`."""
    with atomic_file(path, suffix, mode, what) as (f, _):
        write(f)


class Locked(BlockingIOError):
    """`lock_directory` found the directory locked by a live process (`pid`, None if unknown)."""

    def __init__(self, directory, pid):
        super().__init__(errno.EWOULDBLOCK, f"{directory} is locked by process {pid}")
        self.directory, self.pid = directory, pid


LOCK_NAME = ".vaelib.lock"


@contextlib.contextmanager
def lock_directory(directory, name=LOCK_NAME):
    """Hold an exclusive flock on `directory/name` (holding this process's pid) for the block.

    Raises `Locked` at once, with the holder's pid, when a live process holds it. The lock file is
    removed when the block ends; a file left by a killed holder is unlocked and simply taken over.
    Without flock (Windows) nothing is locked.
    """
    if fcntl is None:
        yield
        return
    path = Path(directory) / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.read(fd, 64).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            raise Locked(directory, int(text) if text.isdigit() else None) from None
        except OSError:
            os.close(fd)  # no flock on this file system: run unlocked
            yield
            return
        try:  # the holder unlinks the file before it unlocks: a lock on an unlinked file is stale
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
