"""Argument checks shared by vaelib's public functions.

Each raises TypeError (wrong type or dtype) or ValueError (wrong shape or value) with a message
that names the argument, what it got and what was expected.
"""

import math
import operator

import numpy as np
import torch

# The floating dtypes vaelib computes in. Half precision (float16, bfloat16) is refused:
# log-densities of hundreds of nats, exp(-logvar) and Cholesky factors lose all their digits there
# (float16 has 3 significant digits and overflows at 65504), and several torch CPU kernels do not
# implement it.
FLOAT_DTYPES = (torch.float32, torch.float64)


def tensor(name, x, *, min_dim=0, finite=True, allow_half=False):
    """Check that `x` is a float32/float64 tensor with at least `min_dim` dimensions and finite
    entries.

    allow_half: also accept float16/bfloat16, for data that the caller converts (exactly) to
        float32/64.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES and not (
        allow_half and x.dtype in (torch.float16, torch.bfloat16)
    ):
        hint = (
            " (half precision is not supported: convert with .float() or .double())"
            if x.is_floating_point()
            else ""
        )
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got dtype "
            f"{x.dtype}{hint}"
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s) (..., D), got shape {tuple(x.shape)}"
        )
    if finite and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(
            f"{name} contains {bad} values (shape {tuple(x.shape)}); expected finite numbers"
        )
    return x


def as_tensor(name, x):
    """Data as a tensor: a floating-point numpy array becomes one (sharing memory when it can),
    tensors pass through.

    Raises TypeError for an integer array (with the hint to scale it) or anything that is neither.
    """
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(
                f"{name} must be a floating-point array (float32 or float64), got numpy dtype "
                f"{x.dtype} "
                f"with shape {x.shape}"
                + (
                    " (scale integer images to [0, 1] first, e.g. x / 255, or "
                    "x.astype(np.float32) / 255)"
                    if x.dtype.kind in "iu"
                    else ""
                )
            )
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, order="C")  # torch.from_numpy needs a writable, contiguous array
        return torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    return x


def broadcast(**named):
    """Check that the named tensors broadcast together; return the broadcast shape."""
    shapes = {k: tuple(v.shape) for k, v in named.items()}
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(
            f"shapes do not broadcast: {desc}; batch dimensions must match or be 1"
        ) from None


def count(name, n, *, minimum=1):
    """Check that `n` is a number of things (samples, epochs, layers): an int >= `minimum`, 1 unless
    given.

    Bools are rejected (True is an int to Python, but never a meant count).
    """
    if isinstance(n, np.integer):
        n = int(n)  # a numpy integer (np.int64 from an array's shape or sum) is a count too
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def nonnegative_int(name, n):
    """Check that `n` is an int >= 0 that is not a count, such as a seed (bools are rejected)."""
    return count(name, n, minimum=0)


def renamed(new, new_value, old, old_value, default=None):
    """The value of a keyword argument `new` that also goes by the alias `old`, without a warning.

    new_value is what the caller passed as `new` (or its `default`); old_value what they passed as
    `old` (None when not given). Giving both with different values is a TypeError.
    """
    if old_value is None:
        return new_value
    if new_value != default and new_value != old_value:
        raise TypeError(
            f"{new}={new_value!r} and {old}={old_value!r} given; {old} is the former name of "
            f"{new}: pass {new} only"
        )
    return old_value


def positive_scalar(name, s):
    """Check that `s` is a finite positive number (or a 0-dim tensor); return it as a float."""
    if isinstance(s, torch.Tensor):
        if s.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(s.shape)}")
        s = s.item()
    if isinstance(s, (np.floating, np.integer)):
        s = s.item()  # numpy scalars (np.float32 sigma_x) are numbers too
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(s).__name__}")
    s = float(s)
    if not (s > 0 and s < float("inf")):
        raise ValueError(f"{name} must be a finite positive number, got {s}")
    return s


def generator(name, g):
    if g is not None and not isinstance(g, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(g).__name__}")
    return g


def function(name, f, signature):
    """Check that `f` is callable; `signature` describes what it should map, e.g. "(x, z) -> log
    p(x, z)"."""
    if not callable(f):
        raise TypeError(f"{name} must be a callable {signature}, got {type(f).__name__}")
    return f


def flag(name, b):
    """Check that `b` is a bool (not a string such as "no", which would count as true)."""
    if not isinstance(b, bool):
        raise TypeError(f"{name} must be True or False, got {type(b).__name__} {b!r}")
    return b


def dim(name, d, ndim):
    """Check that `d` is an int that indexes one of `ndim` dimensions (negative counts from the
    end); return it >= 0."""
    if isinstance(d, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        d = operator.index(d)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(d).__name__}") from None
    if not -ndim <= d < ndim:
        raise ValueError(
            f"{name} must be in [{-ndim}, {ndim - 1}] for a tensor with {ndim} dimension(s), got "
            f"{d}"
        )
    return d % ndim


def nonempty_batch(name, x):
    """Check that the (B, ...) tensor `x` holds at least one example: a mean over B = 0 is NaN."""
    if x.dim() >= 1 and x.shape[0] == 0:
        raise ValueError(
            f"{name} must hold at least one example, got an empty batch of shape {tuple(x.shape)}"
        )
    return x


def symmetric(name, a):
    """Check that the (..., D, D) matrix `a` is symmetric up to rounding; return the symmetrised 0.5
    (a + a^T).

    Tolerance: |a - a^T| <= sqrt(eps) * max|a| elementwise (1.5e-8 relative in float64, 3.5e-4 in
        float32),
    far above the rounding of a computed product such as W W^T + s I, far below a real asymmetry.
    """
    at = a.transpose(-2, -1)
    scale = float(a.abs().max()) if a.numel() else 0.0
    tol = math.sqrt(torch.finfo(a.dtype).eps) * scale
    worst = float((a - at).abs().max()) if a.numel() else 0.0
    if worst > tol:
        raise ValueError(
            f"{name} must be symmetric, got max |{name} - {name}^T| = {worst:.3g} (shape "
            f"{tuple(a.shape)}, "
            f"tolerance {tol:.3g} = sqrt(eps) * max|{name}|)"
        )
    return 0.5 * (a + at)


def nonempty(name, x):
    """Check that the tensor `x` has at least one entry."""
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def sampleable_logvar(name, logvar):
    """Check that exp(logvar / 2), the standard deviation of a Gaussian to sample from, is finite.

    Above 2 log(max float) (177.4 in float32, 1419.6 in float64) every sample is +-inf and anything
    computed from it (z - mu, the score) is inf or NaN.
    """
    limit = 2.0 * math.log(torch.finfo(logvar.dtype).max)
    if logvar.numel() and float(logvar.detach().max()) >= limit:
        raise ValueError(
            f"{name} must be below {limit:.1f} for {logvar.dtype} so that the standard deviation "
            f"exp({name} / 2) "
            f"is finite, got a maximum of {float(logvar.detach().max()):.4g} (shape "
            f"{tuple(logvar.shape)})"
        )
    return logvar


def unit_scale(x, dims):
    """x divided by a power of two near max|x| over `dims` where that maximum is extreme; exact
    otherwise.

    For scale-invariant statistics (autocorrelation, effective sample size) whose sums of squares
    would overflow (or underflow to 0) for huge (or tiny) values. Dividing by a power of two changes
    only the exponent, so it is exact; columns whose maximum lies in [2^(-e/4), 2^(e/4)], e the
    dtype's largest exponent (2^32 in float32), are left bit-for-bit as they are, and so are columns
    that are all zero.
    """
    amax = x.abs().amax(dim=dims, keepdim=True)
    bound = 2.0 ** (math.frexp(torch.finfo(x.dtype).max)[1] // 4)
    extreme = (amax > bound) | ((amax < 1.0 / bound) & (amax > 0))
    if not bool(extreme.any()):
        return x
    scale = torch.where(extreme, torch.exp2(torch.floor(torch.log2(amax))), torch.ones_like(amax))
    return x / scale


def values(name, x, unit_interval):
    """Finite values (and in [0, 1] if `unit_interval`), in one pass over the tensor x: min and max
    propagate NaN."""
    if x.numel() == 0:
        return x
    lo, hi = torch.stack(torch.aminmax(x)).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = "NaN" if math.isnan(lo) else "inf"
        raise ValueError(
            f"{name} contains {bad} values (shape {tuple(x.shape)}); expected finite numbers"
        )
    if unit_interval and (lo < 0 or hi > 1):
        raise ValueError(
            f"{name} must lie in [0, 1] for a Bernoulli likelihood or binarization, got values in "
            f"[{lo:.4g}, {hi:.4g}] (shape {tuple(x.shape)})"
        )
    return x


def beta(b):
    """The KL weight: a finite number >= 0, returned as a float."""
    if isinstance(b, bool) or not isinstance(b, (int, float)):
        raise TypeError(f"beta must be a number, got {type(b).__name__}")
    b = float(b)
    if not (b >= 0 and math.isfinite(b)):
        raise ValueError(f"beta must be a finite number >= 0, got {b}")
    return b
