"""Checkpoints: save a model and its training state to one file, and load it back.

A checkpoint holds only tensors, dicts, lists, strings and numbers, so
`torch.load(weights_only=True)` reads it and no code from the file runs; a SHA-256 digest over
everything stored detects corruption on load. The model is rebuilt from its class name and
constructor config stored in the file, or, for a model with your own encoder or decoder, loaded into
a model you build (`load_checkpoint(path, model=...)`). Before a model is rebuilt, an allocation
budget bounds what its config may allocate by the bytes of the stored weights, so a crafted config
cannot exhaust memory. The history is stored as its per-epoch lists with the optimizer and generator
state beside it; `load_checkpoint(..., with_state=True).history` is a `vaelib.history.History` that
`fit` resumes from, its missing keys filled as `vaelib.history.KEYS` declares.

Formats: version 2 (with the digest, what `save_checkpoint` writes) is read. Version 1 files carry
no digest, so they cannot be told from a version-2 file whose digest was stripped: they are refused
unless `load_checkpoint(..., allow_unverified=True)` says the file is trusted. `tests/fixtures/`
keeps version-2 files written by an older vaelib that must keep loading and resuming.

Crafted files: before anything is hashed or built, the file must be one zip archive from its first
byte (a file with another checkpoint prepended would load the other one), and every stored tensor
must fit in its stored bytes (a tensor whose metadata claims 10^9 elements over a few stored bytes
would be materialised by the digest).

(Longer than most modules: saving, the digest, and loading with its checks against crafted or
corrupt files and older formats belong together.)
"""

import hashlib
import io
import math
import warnings
import zipfile
from enum import Enum
from pathlib import Path, PurePath
from typing import NamedTuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vaelib import history as _history
from vaelib._atomic import atomic_write, check_regular
from vaelib.models import MODELS, check_model

CHECKPOINT_FORMAT = "vaelib-checkpoint"
CHECKPOINT_VERSION = 2  # 2 adds the SHA-256 digest; version 1 files (no digest) are still read
_READABLE_VERSIONS = (1, 2)


class Checkpoint(NamedTuple):
    """What `load_checkpoint(path, with_state=True)` returns."""

    model: torch.nn.Module  # rebuilt and loaded, on the CPU
    optimizer_state: dict | None  # Adam state dict (history carries it too)
    history: (
        dict | None
    )  # a History with the optimizer and generator state: fit(model, x, n, history=...) resumes
    rng_state: dict | None  # {"device", "state"} of fit's generator (history carries it too)
    metadata: (
        dict | None
    )  # whatever save_checkpoint(metadata=...) stored (the CLI stores the dataset)


def _to_cpu(obj):
    """A copy of a nested structure of tensors/dicts/lists/tuples with every tensor detached on the
    CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


_PLAIN_HINT = "a checkpoint stores str, int, float, bool, None, lists, tuples, dicts and tensors"


def _plain(obj, where):
    """`obj` as the plain values a weights_only load reads back, converting what has an exact plain
    form.

    numpy scalars -> Python numbers (np.float32 through float: exact); numpy arrays -> nested lists;
    paths -> str; subclasses of str/int/float/bool (enums, numpy float64) -> the base type; tensors
    -> detached CPU copies. Anything else (sets, objects, functions, datetimes) raises TypeError
    naming `where`.
    """
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized:
            raise TypeError(f"{where} is a {obj.layout} tensor; {_PLAIN_HINT} (dense tensors only)")
        return obj.detach().cpu().clone()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(
                f"{where} is a numpy array of dtype {obj.dtype}; {_PLAIN_HINT} (numeric arrays are "
                "converted to lists)"
            )
        return obj.tolist()
    if isinstance(obj, np.generic):
        return _plain(obj.item(), where)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Enum) and not isinstance(obj, (str, int, float)):
        raise TypeError(
            f"{where} is the enum member {obj!r}; {_PLAIN_HINT} (store its .value or .name)"
        )
    for base in (bool, int, float, str):  # bool before int: bool is an int subclass
        if isinstance(obj, base):
            return base.__str__(obj) if base is str else base(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = _plain(k, f"a key of {where}")
            if not (key is None or type(key) in (str, int, float, bool)):
                raise TypeError(
                    f"the key {k!r} of {where} has type {type(k).__name__}; keys must be str, int, "
                    f"float, "
                    "bool or None"
                )
            out[key] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return (
            type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
            if type(obj) in (list, tuple)
            else list(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
        )
    raise TypeError(
        f"{where} has type {type(obj).__name__}; {_PLAIN_HINT} (convert it, e.g. to str)"
    )


def _digest(payload):
    """SHA-256 (hex) over every entry of `payload` except "digest": keys, values, tensor dtypes,
    shapes and bytes.

    The walk follows dict insertion order, which torch.save/torch.load preserve; each value is
    tagged with its type and length, so different structures never hash alike.
    """
    h = hashlib.sha256()

    def walk(obj):
        if obj is None:
            h.update(b"N")
        elif isinstance(obj, bool):
            h.update(b"T" if obj else b"F")
        elif isinstance(obj, int):
            h.update(b"I%d;" % obj)
        elif isinstance(obj, float):
            h.update(b"R" + float.hex(obj).encode() + b";")
        elif isinstance(obj, complex):
            h.update(
                b"C" + float.hex(obj.real).encode() + b"," + float.hex(obj.imag).encode() + b";"
            )
        elif isinstance(obj, str):
            data = obj.encode("utf-8", "surrogatepass")
            h.update(b"S%d:" % len(data) + data)
        elif isinstance(obj, bytes):
            h.update(b"Y%d:" % len(obj) + obj)
        elif isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"X{t.dtype}{tuple(t.shape)}:".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            h.update(b"D%d:" % len(obj))
            for k, v in obj.items():
                walk(k)
                walk(v)
        elif isinstance(obj, (list, tuple)):
            h.update((b"L%d:" if isinstance(obj, list) else b"U%d:") % len(obj))
            for v in obj:
                walk(v)
        else:
            raise TypeError(type(obj).__name__)

    for key, value in payload.items():
        if key != "digest":
            walk(key)
            walk(value)
    return h.hexdigest()


class _OverBudget(Exception):
    """Raised by _AllocationBudget when building a model would allocate more than the checkpoint
    stores."""


class _AllocationBudget(TorchDispatchMode):
    """Refuse tensor allocations beyond `budget` bytes in total, before they happen.

    Every factory op whose first argument is a size (aten.empty, zeros, ones, full, rand, randn,
    ...) is counted at 8 bytes per element (or its dtype's size) before it runs; other ops work on
    existing tensors. A crafted config cannot make load_checkpoint allocate a huge model: it fails
    at the first big layer.
    """

    def __init__(self, budget):
        super().__init__()
        self.left = budget

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        size = args[0] if args else None
        if isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size):
            dtype = kwargs.get("dtype")
            nbytes = math.prod(size) * (getattr(dtype, "itemsize", 8) if dtype is not None else 8)
            self.left -= nbytes
            if self.left < 0:
                raise _OverBudget(
                    f"the config asks for a tensor of shape {list(size)} ({nbytes / 2**20:.1f} "
                    f"MiB), more "
                    "than the file's weights hold"
                )
        return func(*args, **kwargs)


def _rebuild(path, cls, config, state):
    """cls(**config), checked against the stored tensors: their number and bytes bound what building
    may allocate, and the built model's state_dict keys and shapes must equal the stored ones.
    Raises ValueError naming `path`."""
    hidden = config.get("hidden_dims")
    if isinstance(hidden, (list, tuple)) and len(hidden) > len(
        state
    ):  # each layer stores >= 1 tensor
        raise ValueError(
            f"{path}: broken checkpoint: config hidden_dims has {len(hidden)} layers but the file "
            f"stores "
            f"only {len(state)} tensors"
        )
    stored = sum(t.numel() * t.element_size() for t in state.values())
    try:
        with _AllocationBudget(
            2 * stored + 2**24
        ):  # the weights, their initialisation, 16 MiB of slack
            model = cls(**config)
    except _OverBudget as e:
        raise ValueError(
            f"{path}: broken checkpoint: {e} ({stored} bytes); refusing to build it"
        ) from None
    except Exception as e:  # noqa: BLE001 - a config that does not build is a broken file
        raise ValueError(
            f"{path}: broken checkpoint: cannot rebuild {cls.__name__} from its config "
            f"{_short(config)} "
            f"({_short(' '.join(str(e).split()))})"
        ) from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problem = _state_mismatch(
        want, {k: tuple(v.shape) for k, v in state.items()}, "the config's model"
    )
    if problem is not None:
        raise ValueError(
            f"{path}: broken checkpoint: {problem}; if you built this model yourself (your own "
            f"encoder "
            "or decoder), pass it: load_checkpoint(path, model=model)"
        )
    return model


def _state_mismatch(want, have, what):
    if want == have:
        return None
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = [
        f"{k}: file {have[k]}, {what} {want[k]}" for k in want if k in have and want[k] != have[k]
    ]
    parts = (
        ([f"missing {missing[:5]}"] if missing else [])
        + ([f"unexpected {extra[:5]}"] if extra else [])
        + ([f"shapes differ ({'; '.join(shapes[:5])})"] if shapes else [])
    )
    return f"the stored weights do not match {what}: {', '.join(parts)}"


def _nonfinite_parameter(state):
    """The name of the first floating tensor of a state dict that holds NaN or inf, else None."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(t.isfinite().all()):
            return name
    return None


def warn_if_nonfinite(model, where):
    """Warn (RuntimeWarning) when a model's weights hold NaN or inf: every result from it is NaN."""
    name = _nonfinite_parameter(model.state_dict())
    if name is not None:
        warnings.warn(
            f"{where}: the model's weights hold NaN or inf values (first in {name!r}); its ELBO, "
            "samples and likelihoods will be NaN. Use an earlier checkpoint or re-train",
            RuntimeWarning,
            stacklevel=3,
        )
    return name


def save_checkpoint(path, model, optimizer=None, history=None, rng_state=None, metadata=None):
    """Save a model, and optionally the training state, so that `load_checkpoint` reads it back.

    Stored: format tag and version, the model class name ("VAE" or "Autoencoder"), its constructor
    config, its state_dict (on the CPU), the optimizer state, the history, the generator state,
    `metadata`, and a SHA-256 digest of all of these — only tensors, dicts, lists, strings and
    numbers (readable with weights_only=True). numpy scalars and arrays and paths in `history` and
    `metadata` are converted to plain numbers, lists and strings; values without a plain form raise
    TypeError here, never later at load time. The file is written to a temporary file in the same
    directory, flushed to disk, then renamed over `path` with os.replace, so an interrupted save
    never leaves a broken checkpoint at `path`; a symbolic link at `path` stays a link to the new
    file.

    An MLP model is rebuilt from the file alone. A model with your own encoder or decoder (its
    config says "custom", or the config's MLP does not have its weights) is stored just the same;
    load it with `load_checkpoint(path, model=a_model_you_built)`.

    Args:
        path: file to write (its directory must exist).
        model: a vaelib.models.VAE or Autoencoder.
        optimizer: a torch optimizer, or its state dict, or None: then `history.optimizer_state`
            when `history` is a History from fit.
        history: per-epoch lists from fit (or None).
        rng_state: fit's generator state, or None: then `history.rng_state` when available.
        metadata: optional dict of plain values (str, numbers, lists, dicts), e.g. {"dataset":
            "digits"}.
    Returns:
        pathlib.Path of the checkpoint.
    """
    check_model(model)
    if isinstance(path, str) and not path:
        raise ValueError("path must name a file, got ''")
    path = Path(path)
    if optimizer is None:
        optimizer = getattr(history, "optimizer_state", None)
    if rng_state is None:
        rng_state = getattr(history, "rng_state", None)
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.state_dict()
    if optimizer is not None and not isinstance(optimizer, dict):
        raise TypeError(
            "optimizer must be a torch optimizer, its state dict, or None, got "
            f"{type(optimizer).__name__}"
        )
    if history is not None and not isinstance(history, dict):
        raise TypeError(
            f"history must be a dict of per-epoch lists or None, got {type(history).__name__}"
        )
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    if rng_state is not None and not isinstance(rng_state, dict):
        raise TypeError(
            f"rng_state must be the dict {{'device', 'state'}} from a History, got "
            f"{type(rng_state).__name__}"
        )
    if path.is_dir():
        raise IsADirectoryError(
            f"cannot save checkpoint {path}: it is a directory; name a file such as "
            f"{path / 'model.pt'}"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"cannot save checkpoint {path}: directory {path.parent} does not exist"
        )
    check_regular(path, "checkpoint")  # a FIFO or device node is refused, never replaced
    warn_if_nonfinite(model, f"saving {path}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "config": _plain(model.config, "model.config"),
        "state_dict": _plain(dict(model.state_dict()), "model.state_dict()"),
        "optimizer_state": _plain(_to_cpu(optimizer), "the optimizer state"),
        "history": None
        if history is None
        else _plain({k: list(v) for k, v in history.items()}, "history"),
        "rng_state": _plain(_to_cpu(rng_state), "rng_state"),
        "metadata": _plain(metadata, "metadata"),
    }
    payload["digest"] = _digest(payload)
    # Serialised in memory first: a full disk then fails in our own write as an OSError naming the
    # file (torch.save straight into the file turns it into an "enforce fail" RuntimeError).
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()), what="checkpoint")
    return path


def _check_layout(path, f):
    """Refuse a file that is not one zip archive starting at its first byte (another file prepended:
    torch reads the archive at the start, zip readers the one at the end)."""
    head = f.read(4)
    f.seek(0)
    if head != b"PK\x03\x04":
        return  # not a zip at all: torch.load reports it below
    try:
        with zipfile.ZipFile(f) as z:
            first = min((i.header_offset for i in z.infolist()), default=0)
    except Exception:  # noqa: BLE001 - a damaged archive (any error): torch.load reports it below
        first = 0
    f.seek(0)
    if first != 0:
        raise ValueError(
            f"{path}: not a single checkpoint: its archive starts {first} bytes into the file "
            "(another file was joined in front of it); refusing to load it"
        )


def _check_tensor_sizes(path, obj, where="the file"):
    """Refuse tensors that claim more elements than their stored bytes hold (before any hashing:
    the digest would materialise the claimed size)."""
    if isinstance(obj, torch.Tensor):
        itemsize = obj.element_size()
        stored = obj.untyped_storage().nbytes()
        claimed = obj.numel() * itemsize
        extent = (
            obj.storage_offset() + 1 + sum((n - 1) * st for n, st in zip(obj.shape, obj.stride()))
            if obj.numel()
            else 0
        ) * itemsize
        if claimed > stored or extent > stored:
            raise ValueError(
                f"{path}: broken checkpoint: {where} claims a tensor of shape {list(obj.shape)} "
                f"({claimed} bytes) over {stored} stored bytes; refusing to read it"
            )
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_tensor_sizes(path, v, f"{where}[{k!r}]" if where != "the file" else repr(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_tensor_sizes(path, v, f"{where}[{i}]")


def _read_payload(path):
    """torch.load(weights_only=True) of an existing file; anything unreadable becomes a ValueError
    naming it."""
    with open(path, "rb") as f:  # errors opening the file (permissions) surface as they are
        _check_layout(path, f)
        try:
            with (
                warnings.catch_warnings()
            ):  # a damaged file can make the unpickler warn before it fails
                warnings.simplefilter("ignore")
                return torch.load(f, weights_only=True, map_location="cpu")
        except (
            Exception
        ) as e:  # corrupt or truncated zip (even as OSError), bad pickle, disallowed globals
            kind, first = type(e).__name__, (str(e).strip().splitlines() or [""])[0][:200]
    if first.startswith("Weights only load failed"):
        first = "not a torch file of plain tensors, dicts, lists, strings and numbers"
    raise ValueError(
        f"{path}: not a readable vaelib checkpoint; the file is corrupt, truncated or of another "
        f"format ({kind}: {first})"
    )


def _verify(path, payload, allow_unverified=False):
    """Check the format tag, version, tensor sizes and digest; raise ValueError naming `path`."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a vaelib checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    version = payload.get("version")
    if version not in _READABLE_VERSIONS or isinstance(version, bool):
        raise ValueError(
            f"{path}: checkpoint version {version!r}; this vaelib reads versions "
            f"{', '.join(map(str, _READABLE_VERSIONS))}"
        )
    _check_tensor_sizes(path, payload)
    if version == 1 and not allow_unverified:
        raise ValueError(
            f"{path}: checkpoint version 1 has no SHA-256 digest, so its contents cannot be "
            "verified (a version-2 file rewritten as version 1 looks the same); if you trust the "
            "file, load it with load_checkpoint(path, allow_unverified=True) and save it again"
        )
    if version >= 2:
        stored = payload.get("digest")
        try:
            actual = _digest(payload)
        except TypeError as e:
            actual = f"<unhashable {e}>"
        if not isinstance(stored, str) or stored != actual:
            raise ValueError(
                f"{path}: corrupt checkpoint: its SHA-256 digest does not match its contents "
                f"(stored "
                f"{str(stored)[:16]!s}..., computed {actual[:16]}...); the file changed after it "
                f"was "
                "saved. Use another copy or re-train"
            )
    for key, kind in (
        ("metadata", dict),
        ("history", dict),
        ("optimizer_state", dict),
        ("rng_state", dict),
    ):
        value = payload.get(key)
        if value is not None and not isinstance(value, kind):
            raise ValueError(
                f"{path}: broken checkpoint: {key} is a {type(value).__name__}, expected a dict or "
                f"None"
            )


def load_checkpoint(path, model=None, with_state=False, allow_unverified=False):
    """Load a checkpoint written by `save_checkpoint`: rebuild its model on the CPU, or load it into
    `model`.

    Reads with torch.load(path, weights_only=True, map_location="cpu"): no code from the file runs.
    The SHA-256 digest stored in the file is checked first, so a corrupted file is an error, never a
    model with silently changed weights. Before any weights are allocated, the stored config is
    checked against the stored tensor shapes (a crafted config cannot make it allocate a huge
    model).

    Args:
        path: the checkpoint file.
        model: None to rebuild the model from the file's class name and config (MLP models), or a
            VAE/Autoencoder you built (e.g. with your own encoder and decoder) to load the weights
            into:
            its class, config and state_dict keys and shapes must match the file's. The model keeps
            its device and takes the stored dtype.
        with_state: False returns the model; True returns a Checkpoint(model, optimizer_state,
            history, rng_state, metadata) NamedTuple, whose fields go straight into fit(...) to
            resume training.
        allow_unverified: also read a version-1 file (no digest: nothing checks its contents).
    A model whose weights hold NaN or inf loads with a RuntimeWarning.
    Returns:
        The VAE or Autoencoder with the stored weights (in the stored dtype), or a Checkpoint.
    Raises:
        FileNotFoundError: `path` does not exist (the message names it).
        ValueError: the file is not a readable vaelib checkpoint (corrupt, truncated, tampered with,
            of another format), its model needs `model=`, or `model` does not match it.
        TypeError: `model` is not a VAE or Autoencoder.
    """
    if model is not None:
        check_model(model)
    if isinstance(path, str) and not path:
        raise ValueError("path must name a checkpoint file, got ''")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not isinstance(allow_unverified, bool):
        raise TypeError(f"allow_unverified must be a bool, got {type(allow_unverified).__name__}")
    payload = _read_payload(path)
    _verify(path, payload, allow_unverified)
    cls = MODELS.get(payload.get("model_class"))
    config, state = payload.get("config"), payload.get("state_dict")
    if (
        cls is None
        or not isinstance(config, dict)
        or not isinstance(state, dict)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ValueError(
            f"{path}: broken checkpoint: model_class {payload.get('model_class')!r}, expected one "
            f"of "
            f"{sorted(MODELS)} with a config and a state_dict of tensors"
        )
    floats = [t for t in state.values() if t.is_floating_point()]
    if model is None:
        if any(config.get(k) == "custom" for k in ("encoder", "decoder")):
            raise ValueError(
                f"{path}: holds a {cls.__name__} with your own encoder/decoder (config "
                f"{_short(config)}), "
                "which the file alone cannot rebuild: build the same model and pass it, "
                "load_checkpoint(path, model=model)"
            )
        model = _rebuild(path, cls, config, state)
    else:
        if not isinstance(model, cls):
            raise ValueError(
                f"{path}: holds a {cls.__name__}, cannot load it into a {type(model).__name__}"
            )
        mine = _plain(model.config, "model.config")
        if mine != config:
            diff = sorted(
                k
                for k in set(mine) | set(config)
                if mine.get(k, "<absent>") != config.get(k, "<absent>")
            )
            details = "; ".join(
                f"{k}: file {_short(repr(config.get(k, '<absent>')))}, "
                f"model {_short(repr(mine.get(k, '<absent>')))}"
                for k in diff[:5]
            )
            raise ValueError(
                f"{path}: the model's config differs from the file's ({details}); build the model "
                "with the same arguments"
            )
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items()}
        problem = _state_mismatch(want, have, "the model")
        if problem is not None:
            raise ValueError(
                f"{path}: {problem}; build the model with the same encoder and decoder as the "
                f"saved one"
            )
    try:
        if floats:
            model.to(dtype=floats[0].dtype)
        with torch.no_grad():
            model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise ValueError(
            f"{path}: broken checkpoint: cannot load the weights into {cls.__name__} "
            f"({_short(' '.join(str(e).split()))})"
        ) from None
    warn_if_nonfinite(model, f"loading {path}")
    if not with_state:
        return model
    history = payload.get("history")
    if (
        history is not None
    ):  # carries the state to resume from: fit(model, x, epochs, history=checkpoint.history)
        history = _history.History(
            history,
            optimizer_state=payload.get("optimizer_state"),
            rng_state=payload.get("rng_state"),
        )
    return Checkpoint(
        model,
        payload.get("optimizer_state"),
        history,
        payload.get("rng_state"),
        payload.get("metadata"),
    )


def _short(value, limit=300):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
