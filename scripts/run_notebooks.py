"""Execute notebooks in order, in place, each in a fresh kernel (the body of `make run`).

Usage: python scripts/run_notebooks.py [notebooks/ or paths...] [--timeout SECONDS]
Prints each notebook's wall-clock time. A failing notebook stops the run with its error, and the
file on disk is left as it was (the executed copy is written atomically, vaelib._atomic).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from vaelib._atomic import atomic_write


def run(path, timeout):
    """Execute one notebook in full mode in a fresh kernel and write it back; its seconds."""
    os.environ.pop("VAELIB_QUICK", None)  # a committed notebook is the full series
    # a non-interactive backend (MPLBACKEND=agg, as `make notebooks` sets) would still save figures/
    # but leave the committed notebook without its inline images
    os.environ.pop("MPLBACKEND", None)
    nb = nbformat.read(path, as_version=4)
    # store_widget_state=False: explorers (vaelib.widgets) need a live kernel; their saved state
    # would only add megabytes and a widget manager script from another host to the static book.
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    atomic_write(
        path, lambda f: nbformat.write(nb, f), mode="w"
    )  # keeps the notebook's permissions
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
