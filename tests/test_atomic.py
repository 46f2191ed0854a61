"""Tests for vaelib._atomic, the one atomic write behind checkpoints, downloads, figures and
notebooks.

A killed writer leaves its temporary file behind; the next write removes it unless a live writer
holds its lock. A path that is a symbolic link keeps the link. New files get 0666 minus the umask; a
replaced file keeps its permissions.
"""

import fcntl
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from vaelib import _atomic


def atomic_write(path, write, suffix=".tmp"):
    with _atomic.atomic_file(path, suffix) as (f, _):
        write(f)


def test_write_through_a_symlink_keeps_the_link(tmp_path):
    target_dir = tmp_path / "runs"
    target_dir.mkdir()
    link = tmp_path / "latest.pt"
    link.symlink_to(target_dir / "run1.pt")
    for content in (
        b"first",
        b"second",
    ):  # the first write creates the target, the second replaces it
        atomic_write(link, lambda f: f.write(content))
        assert link.is_symlink() and os.readlink(link) == str(target_dir / "run1.pt")
        assert link.read_bytes() == content
    assert sorted(p.name for p in target_dir.iterdir()) == ["run1.pt"]


def test_killed_writer_leaves_a_tmp_file_that_the_next_write_removes(tmp_path):
    path = tmp_path / "model.pt"
    code = textwrap.dedent(f"""
        import os, signal
        from vaelib import _atomic
        with _atomic.atomic_file({str(path)!r}, ".tmp") as (f, _):
            f.write(b"half a file")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the write
    """)
    rc = subprocess.run([sys.executable, "-c", code]).returncode
    assert rc == -signal.SIGKILL
    orphans = list(tmp_path.glob(".model.pt.*.tmp"))
    assert len(orphans) == 1 and not path.exists()
    atomic_write(path, lambda f: f.write(b"complete"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert path.read_bytes() == b"complete"


def test_a_live_writers_tmp_file_is_kept(tmp_path):
    live = tmp_path / ".model.pt.abcd1234.tmp"
    live.write_bytes(b"")
    with open(live, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        atomic_write(tmp_path / "model.pt", lambda out: out.write(b"new"))
        assert live.exists()
    atomic_write(
        tmp_path / "model.pt", lambda out: out.write(b"newer")
    )  # the lock is gone: an orphan now
    assert not live.exists() and (tmp_path / "model.pt").read_bytes() == b"newer"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_ordinary_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f", lambda out: out.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode


def test_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o640)
    old = os.umask(0o022)
    try:
        _atomic.atomic_write(
            path, lambda out: out.write("new ü"), mode="w"
        )  # text mode writes UTF-8
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_bytes() == "new ü".encode()


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def fail(out):
        out.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_clean_orphans_only_touches_its_pattern(tmp_path):
    for name in (".a.pt.x1.tmp", ".a.pt.x2.tmp", ".b.pt.x3.tmp", "a.pt", ".a.pt.x4.part"):
        (tmp_path / name).write_bytes(b"")
    removed = _atomic.clean_orphans(tmp_path, ".a.pt.", ".tmp")
    assert sorted(p.name for p in removed) == [".a.pt.x1.tmp", ".a.pt.x2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.pt.x4.part", ".b.pt.x3.tmp", "a.pt"]
