"""Shared fixtures. Tests run in float64 unless a test says otherwise."""

import pytest
import torch


@pytest.fixture
def gen():
    """A seeded generator: every Monte Carlo test is reproducible."""
    return torch.Generator().manual_seed(1234)


def linear_gaussian(d=3, k=2, noise_std=0.5, seed=0, dtype=torch.float64, orthogonal=False):
    """A random LinearGaussian; orthogonal=True gives orthogonal columns of W (diagonal posterior cov)."""
    from vaelib.toy import LinearGaussian

    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g, dtype=dtype)
    if orthogonal:
        Q, _ = torch.linalg.qr(W)
        W = Q * torch.linspace(0.8, 2.0, k, dtype=dtype)
    b = torch.randn(d, generator=g, dtype=dtype)
    return LinearGaussian(W, b, noise_std)
