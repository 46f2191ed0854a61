"""Argument checks shared by vaelib's public functions.

Each raises TypeError (wrong type or dtype) or ValueError (wrong shape or value) with a message
that names the argument, what it got and what was expected.
"""

import torch


def tensor(name, x, *, min_dim=0, finite=True):
    """Check that `x` is a floating-point tensor with at least `min_dim` dimensions and finite entries."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) (..., D), got shape {tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{name} contains {bad} values (shape {tuple(x.shape)}); expected finite numbers")
    return x


def broadcast(**named):
    """Check that the named tensors broadcast together; return the broadcast shape."""
    shapes = {k: tuple(v.shape) for k, v in named.items()}
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shapes do not broadcast: {desc}; batch dimensions must match or be 1") from None


def positive_int(name, n, *, minimum=1):
    """Check that `n` is an int >= `minimum` (bools are rejected)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def positive_scalar(name, s):
    """Check that `s` is a finite positive number (or a 0-dim tensor); return it as a float."""
    if isinstance(s, torch.Tensor):
        if s.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(s.shape)}")
        s = s.item()
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
