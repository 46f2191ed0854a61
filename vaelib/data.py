"""Datasets for the series: embedded digits, MNIST and Fashion-MNIST; your own arrays from an .npz
file (`load_npz`).

(Longer than most modules: finding, downloading and verifying the IDX files, with their error paths,
is most of it.)

Every dataset loads as `x` float32 (N, D) with pixel values in [0, 1] and `y` int64 (N,).

- `digits`: scikit-learn's embedded 8x8 digits (1797 images, D = 64, pixel values 0..16 divided by
  16). Works offline; the default wherever images are needed without data or network.
- `mnist`, `fashion-mnist`: the 28x28 IDX files (D = 784, bytes 0..255 divided by 255), read gzipped
  or raw. Each file is searched for, in order, in

      1. the explicit `root` argument (a directory holding the files),
      2. `$VAELIB_DATA/<name>/`,
      3. the user cache `$XDG_CACHE_HOME/vaelib/<name>/` (default `~/.cache/vaelib/<name>/`),
      4. for fashion-mnist only, the Debian system copy `/usr/share/datasets/fashion-mnist/`
         (package dataset-fashion-mnist),

  and, if it is nowhere and `download=True`, fetched from the official mirrors into the first of
  `root`, `$VAELIB_DATA/<name>/`, the user cache. The mirrors can be replaced with `mirrors=` or the
  environment variable `VAELIB_MIRRORS` (comma-separated base URLs, http(s):// or file://).

Every file, found or downloaded, is verified by the SHA-256 of its uncompressed bytes, so a
recompressed copy (the Debian one) verifies the same as the upstream `.gz`. Decoded arrays are kept
in memory per process: a second `load` of the same files is a copy, not a re-read.
"""

import contextlib
import gzip
import hashlib
import http.client
import math
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vaelib import _atomic, _memory, _validate

DATASETS = ("digits", "mnist", "fashion-mnist")
SPLITS = ("train", "test")

# digits: a fixed split of the 1797 images. np.random.RandomState(0).permutation(1797): the first
# 1500 indices are "train", the remaining 297 "test". RandomState's stream is frozen by numpy's
# compatibility policy, so the split is the same on every machine and numpy version.
DIGITS_SEED = 0
DIGITS_N_TRAIN = 1500

# IDX files of each split: (images, labels), names without the ".gz".
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class Checksum(NamedTuple):
    """An expected digest of a file's uncompressed IDX bytes (the same for a raw file, the upstream
    .gz and any recompressed copy)."""

    algorithm: str
    digest: str


# (dataset, file) -> Checksum. Sources:
# - fashion-mnist: SHA-256 of the uncompressed files as given in the design document; they match the
#   Debian copy in /usr/share/datasets/fashion-mnist/ after gunzip.
# - mnist: SHA-256 of the uncompressed files (47040016, 60008, 7840016 and 10008 bytes), as
# published in several independent projects that pin the decompressed MNIST files. The upstream .gz
# files are also known by MD5 (train-images f68b3c2dcbeaaa9fbdd348bbdeb94873, train-labels
# d53e105ee54ea40749a09fcbcd1e9432, t10k-images 9fb629c4189551a2d022fa330f9573f3, t10k-labels
# ec29112dd5afa0611ce80d1b7f02629c); those cover the compressed bytes only, so they are not used.
_CHECKSUMS = {
    ("mnist", "train-images-idx3-ubyte"): Checksum(
        "sha256", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    ),
    ("mnist", "train-labels-idx1-ubyte"): Checksum(
        "sha256", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    ),
    ("mnist", "t10k-images-idx3-ubyte"): Checksum(
        "sha256", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    ),
    ("mnist", "t10k-labels-idx1-ubyte"): Checksum(
        "sha256", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    ),
    ("fashion-mnist", "train-images-idx3-ubyte"): Checksum(
        "sha256", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    ("fashion-mnist", "train-labels-idx1-ubyte"): Checksum(
        "sha256", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    ("fashion-mnist", "t10k-images-idx3-ubyte"): Checksum(
        "sha256", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    ("fashion-mnist", "t10k-labels-idx1-ubyte"): Checksum(
        "sha256", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
}

# Base URLs, tried in order; "<base><file>.gz" is fetched.
_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

_SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}

# IDX type code -> numpy dtype (big-endian, as stored).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_CHUNK = 1 << 20

# Uncompressed size of each official file (header + data): the most a file of that name may declare
# or inflate to, so a corrupt or malicious .gz (a "gzip bomb") fails after at most this many bytes.
_MAX_BYTES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}
# read_idx's default limit for other IDX files.
MAX_IDX_BYTES = 1 << 30

# Decoded tensors per (name, split) for digits, per (name, split, (path, size, mtime) of both files)
# for the IDX datasets: an unchanged file is read, parsed and hashed once per process.
_ARRAYS = {}


class DownloadError(OSError):
    """A dataset file could be neither found on disk nor downloaded (network or mirror failure)."""


def clear_cache():
    """Forget the decoded datasets kept in memory by `load`."""
    _ARRAYS.clear()


def load(name, split="train", root=None, download=True, mirrors=None, timeout=30.0, deadline=600.0):
    """Load a dataset split as flattened images in [0, 1] and integer labels.

    Args:
        name: "digits" (embedded, offline), "mnist" or "fashion-mnist".
        split: "train" or "test". digits: a fixed split of 1500 train / 297 test images
            (`np.random.RandomState(0).permutation(1797)`, first 1500 are train); MNIST and
            Fashion-MNIST: the official 60000 / 10000.
        root: a directory holding the IDX files (searched first, and where downloads go). Not used
            for digits.
        download: fetch missing IDX files from the mirrors. False: a missing file is an error.
        mirrors: base URLs to try in order, overriding `$VAELIB_MIRRORS` and the official mirrors.
        timeout: seconds to wait on each network operation (connecting, each read).
        deadline: seconds one file's whole download may take; a slower transfer is abandoned with a
            DownloadError (a server trickling bytes never trips `timeout` alone).

    Returns:
        x: float32 tensor (N, D), D = 64 for digits and 784 for the 28x28 datasets, values in [0,
            1].
        y: int64 tensor (N,), class labels 0..9.

    Raises:
        ValueError: unknown name or split; a file that is corrupt, truncated or fails its checksum.
        FileNotFoundError: a file is missing and `download=False`.
        DownloadError: a file is missing and every mirror failed (the message lists where to put
            it).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(map(repr, DATASETS))}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    _validate.flag("download", download)
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(
                "root must be a directory path (str or os.PathLike) or None, got "
                f"{type(root).__name__}"
            )
        if Path(root).exists() and not Path(root).is_dir():
            raise ValueError(f"root must be a directory holding the IDX files, got a file: {root}")
    if mirrors is not None and not isinstance(mirrors, str):
        if not isinstance(mirrors, (list, tuple)) or not all(isinstance(m, str) for m in mirrors):
            raise TypeError(
                "mirrors must be a base URL, a comma-separated string or a list of URL strings, "
                f"got {mirrors!r}"
            )
    if name == "digits":
        return _load_digits(split)
    timeout = _validate.positive_scalar("timeout", timeout)
    deadline = _validate.positive_scalar("deadline", deadline)

    image_file, label_file = _IDX_FILES[split]
    image_path = _find_or_download(name, image_file, root, download, mirrors, timeout, deadline)
    label_path = _find_or_download(name, label_file, root, download, mirrors, timeout, deadline)
    key = (name, split, _file_key(image_path), _file_key(label_path))
    if key not in _ARRAYS:
        images = _read_verified(name, image_file, image_path)
        labels = _read_verified(name, label_file, label_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{image_path} and {label_path} do not match: images have shape {images.shape}, "
                f"labels {labels.shape}; expected (N, rows, cols) images and (N,) labels"
            )
        x = torch.from_numpy(images.reshape(len(images), -1)).float().div_(255.0)  # (N, rows*cols)
        y = torch.from_numpy(labels.astype(np.int64))  # (N,)
        _ARRAYS[key] = (x, y)
    x, y = _ARRAYS[key]
    return x.clone(), y.clone()


def load_npz(path):
    """Your own data from an .npz file: x_train, x_test (optional) and the image shape.

    Accepted arrays: float (converted to float32), bool, or uint8 pixels (divided by 255); (N, D) or
    (N, H, W) with N >= 1; finite; x_test with the same example shape as x_train. The values' range
    is the caller's to check (a Bernoulli likelihood needs [0, 1]).

    Args:
        path: an .npz file written by np.savez(path, x_train=..., x_test=...).
    Returns:
        x_train: float32 tensor (N, D); x_test: (M, D) or None; image_shape: [H, W] for (N, H, W)
            arrays, else None.
    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a readable .npz file, no x_train, or an array of another dtype, shape or
            with NaN/inf.
    """
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(
            f"{p}: a single .npy array (np.save), expected an .npz file with x_train: save one "
            "with np.savez(FILE, x_train=array)"
        )
    if magic[:4] != b"PK\x03\x04":
        raise ValueError(
            f"{p}: not a readable .npz file (no zip header); save one with np.savez(FILE, "
            f"x_train=...)"
        )
    _check_npz_sizes(p)
    try:
        with np.load(p, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ValueError(
                    f"{p}: a single .npy array, expected an .npz file with x_train (np.savez)"
                )
            names = list(npz.files)
            arrays = {k: npz[k] for k in ("x_train", "x_test") if k in names}
    except (
        ValueError
    ) as e:  # ours, or object arrays: "Object arrays cannot be loaded when allow_pickle=False"
        if str(e).startswith(f"{p}:"):
            raise
        raise ValueError(f"{p}: {' '.join(str(e).split())}; save plain numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{p}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if "x_train" not in arrays:
        raise ValueError(
            f"{p} has no array 'x_train' (it holds {names}); save it with np.savez(FILE, "
            f"x_train=..., "
            "x_test=...)"
        )
    out = {}
    for name, a in arrays.items():
        where = f"{p}: {name}"
        if a.dtype == np.uint8:
            a = a.astype(np.float32)
            a /= 255.0  # in place: one float32 copy of the data, not two
        elif a.dtype.kind == "b" or a.dtype.kind == "f":
            a = a.astype(np.float32)
        else:
            raise ValueError(
                f"{where} has dtype {a.dtype}; expected floats (in [0, 1] for a Bernoulli "
                f"likelihood) "
                "or uint8 pixels"
            )
        if a.ndim not in (2, 3) or a.shape[0] == 0 or 0 in a.shape:
            raise ValueError(
                f"{where} has shape {a.shape}; expected (N, D) or (N, H, W) with N >= 1 examples"
            )
        if not np.isfinite(a).all():
            bad = "NaN" if np.isnan(a).any() else "inf"
            raise ValueError(f"{where} contains {bad} values; expected finite numbers")
        out[name] = a
    train_shape = out["x_train"].shape[1:]
    if "x_test" in out and out["x_test"].shape[1:] != train_shape:
        raise ValueError(
            f"{p}: x_test examples have shape {out['x_test'].shape[1:]}, x_train's {train_shape}"
        )
    image_shape = list(train_shape) if len(train_shape) == 2 else None

    def flat(a):
        return torch.from_numpy(np.ascontiguousarray(a.reshape(a.shape[0], -1)))  # (N, D)

    return flat(out["x_train"]), flat(out["x_test"]) if "x_test" in out else None, image_shape


# The most bytes load_npz accepts for one array as stored (its float32 copy may be up to 4x this for
# uint8 pixels); None: the machine's physical memory.
MAX_NPZ_BYTES = None

# Deflate never inflates more than 1032:1; a member that claims more is lying about its size.
_DEFLATE_RATIO = 1032


def _npz_limit():
    return MAX_NPZ_BYTES if MAX_NPZ_BYTES is not None else _memory.limit_bytes()


def _check_npz_sizes(p):
    """Check each x_train/x_test array's declared size against what the file can hold and a limit,
    before numpy allocates it (a 300-byte file may declare terabytes). Raises ValueError."""
    import zipfile

    file_size = p.stat().st_size
    limit = _npz_limit()
    try:
        with zipfile.ZipFile(p) as z:
            for info in z.infolist():
                name = info.filename.removesuffix(".npy")
                if name not in ("x_train", "x_test"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f, max_header_size=10000)
                    header = f.tell()
                declared = math.prod(shape) * dtype.itemsize
                holds = info.file_size - header
                if info.compress_type == zipfile.ZIP_STORED:
                    can_hold = min(holds, file_size)
                else:
                    can_hold = min(holds, _DEFLATE_RATIO * min(info.compress_size, file_size))
                if declared > can_hold:
                    raise ValueError(
                        f"{p}: {name} declares shape {shape} of {dtype} ({declared} bytes), more "
                        f"than the file can hold ({can_hold} bytes); the file is corrupt or crafted"
                    )
                if declared > limit:
                    raise ValueError(
                        f"{p}: {name} has shape {shape} of {dtype} ({declared / 2**30:.1f} GiB), "
                        f"more than this machine's {limit / 2**30:.1f} GiB of memory can load "
                        "(vaelib.data.MAX_NPZ_BYTES); use a subset of the data"
                    )
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{p}: not a readable .npz file ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if str(e).startswith(f"{p}:"):
            raise
        raise ValueError(f"{p}: not a readable .npz file ({' '.join(str(e).split())})") from None


def read_idx(path, max_bytes=MAX_IDX_BYTES):
    """Read an IDX file (gzipped or raw) into a numpy array, checking its header against its length.

    The IDX header is a magic number 0x0000 | type code | ndim, then ndim big-endian uint32 sizes;
    the data must be exactly prod(sizes) items of the type. The header is read first: a declared
    size above `max_bytes`, or a stream that goes on past the declared size, is an error after
    reading at most max_bytes + 1 bytes, so a gzip bomb cannot exhaust memory.

    Args:
        path: a file, gzipped (by its `.gz` name or gzip magic bytes) or raw.
        max_bytes: the largest uncompressed size (header + data) accepted, default 1 GiB.

    Returns:
        numpy array with the declared shape (d_0, ..., d_{ndim-1}) and the declared type, in native
        byte order (uint8 for MNIST images and labels).

    Raises:
        ValueError: bad gzip stream, wrong magic number, or a length that differs from the header;
            the message names the file and the problem.
    """
    path = Path(path)
    max_bytes = _validate.count("max_bytes", max_bytes)
    return _parse_idx(_read_bytes(path, max_bytes=max_bytes), path)


def _load_digits(split):
    key = ("digits", split)
    if key not in _ARRAYS:
        from sklearn.datasets import load_digits  # imported here: slow, and only digits needs it

        digits = load_digits()
        order = np.random.RandomState(DIGITS_SEED).permutation(len(digits.target))
        idx = order[:DIGITS_N_TRAIN] if split == "train" else order[DIGITS_N_TRAIN:]
        x = torch.from_numpy(digits.data[idx] / 16.0).float()  # (N, 64)
        y = torch.from_numpy(digits.target[idx].astype(np.int64))  # (N,)
        _ARRAYS[key] = (x, y)
    x, y = _ARRAYS[key]
    return x.clone(), y.clone()


def _read_bytes(path, label=None, max_bytes=MAX_IDX_BYTES):
    """The uncompressed IDX bytes of `path`, at most max_bytes + 1 of them read; errors call the
    file `label`.

    Reads the header first and then only as many bytes as it declares (and one more, to detect
    trailing data), so neither a header declaring a huge size nor a stream inflating past its header
    costs memory.
    """
    label = path if label is None else label
    with open(path, "rb") as f:
        gz = path.suffix == ".gz" or f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not gz:
            return _read_idx_stream(f, label, max_bytes)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_idx_stream(stream, label, max_bytes)
        except EOFError:
            raise ValueError(
                f"{label}: truncated gzip file (the compressed stream ends early)"
            ) from None
        except (OSError, zlib.error) as e:
            raise ValueError(f"{label}: corrupt gzip file ({e})") from None


def _read_idx_stream(stream, label, max_bytes):
    """Header, then exactly the declared data bytes from a binary stream (checked by
    `_parse_idx`)."""
    data = stream.read(4)
    if len(data) == 4 and data[:2] == b"\x00\x00" and data[2] in _IDX_DTYPES and data[3] > 0:
        ndim = data[3]
        data += stream.read(4 * ndim)
        if len(data) == 4 + 4 * ndim:
            shape = [int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)]
            declared = len(data) + math.prod(shape) * np.dtype(_IDX_DTYPES[data[2]]).itemsize
            if declared > max_bytes:
                raise ValueError(
                    f"{label}: the IDX header declares shape {tuple(shape)} of "
                    f"{np.dtype(_IDX_DTYPES[data[2]]).name}, "
                    f"{declared} bytes, more than the {max_bytes} bytes allowed for this file; not "
                    f"read"
                )
            data += stream.read(declared - len(data))
            if len(data) == declared and stream.read(1):
                raise ValueError(
                    f"{label}: trailing bytes: the header declares shape {tuple(shape)} = "
                    f"{declared - 4 - 4 * ndim} "
                    f"data bytes, the file holds more; the rest was not read"
                )
    return data


def _parse_idx(data, path):
    """Decode IDX bytes; `path` names the file in error messages."""
    if len(data) < 4:
        raise ValueError(
            f"{path}: not an IDX file: {len(data)} bytes, too short for the 4-byte magic number"
        )
    zero, code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: not an IDX file: magic number 0x{data[:4].hex()}, expected 0x0000 then a "
            f"type "
            f"code in {{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and a dimension count >= "
            f"1 "
            "(0x00000803 for images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated IDX header: {len(data)} bytes, the header of {ndim} dimensions "
            f"needs {header}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes"
        raise ValueError(
            f"{path}: {problem}: the header declares shape {shape} of {dtype.name} = {expected} "
            f"data bytes, "
            f"the file holds {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def _file_key(path):
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_verified(name, file, path, label=None):
    """Read and parse `path`, checking it against the checksum table.

    Errors name the file `label`, default `path`; for a file on disk (no `label`: not a download
    being checked), a checksum mismatch also says what to do with it.
    """
    data = _read_bytes(path, label or path, max_bytes=_MAX_BYTES[file])
    array = _parse_idx(data, label or path)
    checksum = _CHECKSUMS[(name, file)]
    actual = hashlib.new(checksum.algorithm, data).hexdigest()
    if actual != checksum.digest:
        raise ValueError(
            f"{label or path}: checksum mismatch for {name} {file} ({checksum.algorithm} of the "
            f"uncompressed "
            f"bytes): expected {checksum.digest}, got {actual}"
            + (
                ""
                if label
                else ". The file is corrupt or not the official one: delete it and load again, or "
                "replace it with the official file"
            )
        )
    return array


def _cache_home():
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


def _search_dirs(name, root):
    """The directories searched for the files of `name`, in order; downloads go to the first."""
    dirs = []
    if root is not None:
        dirs.append(Path(root))
    env = os.environ.get("VAELIB_DATA", "")
    if env:
        dirs.append(Path(env) / name)
    dirs.append(_cache_home() / "vaelib" / name)
    dirs.extend(Path(d) for d in _SYSTEM_DIRS.get(name, ()))
    return dirs


def _mirror_list(name, mirrors):
    if mirrors is None:
        env = os.environ.get("VAELIB_MIRRORS", "")
        mirrors = env if env.strip() else _MIRRORS[name]
    if isinstance(mirrors, str):
        mirrors = mirrors.split(",")
    bases = [m.strip() for m in mirrors if m.strip()]
    if not bases:
        raise ValueError(f"mirrors must name at least one base URL, got {mirrors!r}")
    return [b if b.endswith("/") else b + "/" for b in bases]


def _where_to_put(name, file, dirs):
    listing = "\n".join(f"  {d}" for d in dirs)
    return (
        f"Searched for {file} or {file}.gz in:\n{listing}\n"
        f"To install {name} by hand, put the four files "
        f"({', '.join(f + '.gz' for s in SPLITS for f in _IDX_FILES[s])}) "
        "into one of these directories, pass root=DIR, or set VAELIB_DATA=DIR to use DIR/"
        f"{name}/ (downloads go to the first of root, $VAELIB_DATA/{name}, the user cache)."
    )


def _find_or_download(name, file, root, download, mirrors, timeout, deadline):
    """Path of `file` (raw preferred over .gz) in the search directories, downloading it if
    missing."""
    dirs = _search_dirs(name, root)
    for d in dirs:
        for candidate in (d / file, d / (file + ".gz")):
            if candidate.is_file():
                return candidate
    if not download:
        raise FileNotFoundError(
            f"{name}: {file} not found and download=False.\n" + _where_to_put(name, file, dirs)
        )
    return _download(name, file, dirs, _mirror_list(name, mirrors), timeout, deadline)


def _download(name, file, dirs, bases, timeout, deadline):
    """Fetch `<base><file>.gz` from each base in turn into `dirs[0]`; return the verified file's
    path.

    `dirs[0]`, the first search directory, is where downloads go: `root`, else
    `$VAELIB_DATA/<name>`, else the user cache. The bytes stream into a temporary file there, which
    is verified (gzip stream, IDX header, checksum) and then renamed into place with `os.replace`,
    so a failed or interrupted download never leaves a partial file under the final name. Any
    failure removes the temporary file, and the temporary files of killed downloads are removed at
    the next attempt (`vaelib._atomic`).
    """
    dest = dirs[0] / (file + ".gz")
    failures = []  # (url, message)
    content_failure = False
    for base in bases:
        url = base + file + ".gz"
        try:
            _fetch_verified(name, file, url, dest, timeout, deadline)
            return dest
        except ValueError as e:  # the mirror answered with bad content: try the next one
            content_failure = True
            failures.append((url, str(e)))
        except (OSError, http.client.HTTPException) as e:
            failures.append((url, f"{type(e).__name__}: {e}"))
    tried = "\n".join(f"  {url}: {msg}" for url, msg in failures)
    message = f"{name}: could not download {file}.gz. Tried:\n{tried}\n" + _where_to_put(
        name, file, dirs
    )
    if content_failure:
        raise ValueError(message)
    raise DownloadError(message)


class _Deadline:
    """Shut down every socket of a request when `deadline` seconds have passed since `start`: a
    server that trickles its headers or body one byte at a time cannot hold the download longer
    (a socket timeout alone is reset by every byte)."""

    def __init__(self, start, deadline):
        self.start, self.deadline, self.passed, self.received = start, deadline, False, 0
        self.sockets, self.lock = [], threading.Lock()
        self.timer = threading.Timer(max(0.0, start + deadline - time.monotonic()), self._expire)
        self.timer.daemon = True

    def _expire(self):
        with self.lock:
            self.passed = True
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def register(self, sock):
        with self.lock:
            self.sockets.append(sock)
            if self.passed:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def opener(self):
        """A urllib opener whose HTTP(S) connections register their sockets here."""
        watch = self

        class HTTPConnection(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                watch.register(self.sock)

        class HTTPSConnection(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                watch.register(self.sock)

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(HTTPConnection, req)

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(HTTPSConnection, req, context=self._context)

        return urllib.request.build_opener(HTTPHandler, HTTPSHandler)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


def _fetch_verified(name, file, url, dest, timeout, deadline):
    """`_fetch` within `deadline` seconds in all: connecting, the headers and the body."""
    start = time.monotonic()
    with _Deadline(start, deadline) as watch:
        try:
            _fetch(name, file, url, dest, timeout, deadline, start, watch)
        except (OSError, http.client.HTTPException, ValueError) as e:
            if not watch.passed or "the deadline" in str(e):
                raise  # an error of its own, or already the deadline's
            elapsed = time.monotonic() - start
            raise DownloadError(
                f"download timed out: the deadline of {deadline:g} s passed after "
                f"{watch.received} bytes ({elapsed:.1f} s: the server is too slow, or sends its "
                "response a few bytes at a time); pass deadline= to allow longer"
            ) from None


def _fetch(name, file, url, dest, timeout, deadline, start, watch):
    """Download `url` into `dest` (atomically), within `timeout` per operation and `deadline`
    overall."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    limit = 2 * _MAX_BYTES[file] + (1 << 20)  # a .gz is never much larger than its content
    with _atomic.atomic_file(dest, ".part") as (out, tmp):
        print(f"vaelib.data: downloading {url} -> {dest}", file=sys.stderr)
        try:
            response = watch.opener().open(url, timeout=min(timeout, deadline))
        except urllib.error.HTTPError as e:
            e.close()
            raise
        with response:
            length = response.headers.get("Content-Length")
            received = 0
            read = getattr(
                response, "read1", response.read
            )  # read1: whatever has arrived, never waits for a full chunk
            while True:
                elapsed = time.monotonic() - start
                if elapsed > deadline or watch.passed:
                    raise DownloadError(
                        f"download timed out: the deadline of {deadline:g} s passed after "
                        f"{received} bytes "
                        f"({received / elapsed:.0f} B/s); pass deadline= to allow longer"
                    )
                block = read(_CHUNK)
                if not block:
                    break
                out.write(block)
                received += len(block)
                watch.received = received
                if received > limit:
                    raise DownloadError(
                        f"the server sent more than {limit} bytes, far more than {file}.gz can hold"
                    )
        if length is not None and received != int(length):
            raise DownloadError(f"connection dropped: received {received} of {int(length)} bytes")
        out.flush()
        _read_verified(name, file, tmp, label=f"{dest.name} (downloaded from {url})")


def dequantize(x, generator=None, levels=256):
    """Uniform dequantization of 8-bit images: x = (k + u) / 256 with u ~ U(0, 1) per pixel.

    The pixel levels k in {0, ..., 255} become continuous values filling [0, 1]: a density p on the
    dequantized x gives a lower bound on the discrete probability of k, log P(k) >= E_u log p((k +
    u) / 256) - D log 256 (Theis, van den Oord & Bethge 2016, sec. 3.1), which
    `vaelib.evaluate.bits_per_dim(..., levels=256)` reports on the discrete 8-bit scale. Without it
    a Gaussian decoder can pile its density on the 256 exact values and its bits/dim mean nothing.

    Args:
        x: (..., D) pixels: a uint8 tensor or array of levels k, or floats k / (levels - 1) in [0,
            1] (what `load` returns for mnist and fashion-mnist: bytes divided by 255).
        generator: optional torch.Generator for u (draw once for a test set, fresh for training).
        levels: number of levels (256 for 8 bits).
    Returns:
        float tensor of x's shape (float32 for integer input, else x's dtype), values in [0, 1).
    Raises:
        ValueError: values that are not levels k / (levels - 1) (e.g. the 0..16 / 16 digits).
    """
    _validate.count("levels", levels, minimum=2)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor or numpy array, got {type(x).__name__}")
    if x.is_floating_point():
        scaled = x.double() * (levels - 1)
        k = scaled.round()
        off = (scaled - k).abs().max().item() if x.numel() else 0.0
        if not math.isfinite(off) or off > 1e-3:
            raise ValueError(
                f"x must hold {levels}-level pixels k / {levels - 1} in [0, 1]; its values are up "
                f"to {off:.3g} levels away from one (not {math.log2(levels):g}-bit data?)"
            )
        dtype = x.dtype
    elif x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must hold pixel levels (uint8 or float), got dtype {x.dtype}")
    else:
        k, dtype = x.double(), torch.get_default_dtype()
    if x.numel() and (k.min().item() < 0 or k.max().item() > levels - 1):
        raise ValueError(
            f"x must hold levels in [0, {levels - 1}], got [{k.min().item():g}, {k.max().item():g}]"
        )
    u = torch.rand(k.shape, generator=generator, dtype=torch.float64, device=k.device)
    return ((k + u) / levels).to(dtype)
