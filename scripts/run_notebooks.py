"""Execute notebooks in order, in place, each in a fresh kernel (the body of `make run`).

Usage: python scripts/run_notebooks.py [notebooks/ or paths...] [--timeout SECONDS]
Prints each notebook's wall-clock time. A failing notebook stops the run with its error, and the
file on disk is left as it was (the executed copy is written to a temporary file and renamed).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path, timeout):
    nb = nbformat.read(path, as_version=4)
    # store_widget_state=False: explorers (vaelib.widgets) need a live kernel; their saved state would only add
    # megabytes and a widget manager script from another host to the static book.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".ipynb", dir=path.parent)
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.chmod(tmp, os.stat(path).st_mode & 0o777)  # keep the notebook's permissions (mkstemp makes 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["notebooks"])
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = []
    for p in map(Path, args.paths):
        paths += sorted(p.glob("[0-9][0-9]_*.ipynb")) if p.is_dir() else [p]
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    os.environ.pop("VAELIB_QUICK", None)  # make run is the full series
    total = 0.0
    for path in paths:
        print(f"running {path} ...", flush=True)
        seconds = run(path, args.timeout)
        total += seconds
        print(f"  {seconds:7.1f} s  {path.name}", flush=True)
    print(f"{len(paths)} notebooks in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
