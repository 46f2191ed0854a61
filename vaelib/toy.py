"""Latent-variable models whose evidence log p(x) and posterior p(z|x) are known exactly.

- `LinearGaussian`: z ~ N(0, I_k), x | z ~ N(W z + b, noise_std^2 I_d). Everything is Gaussian, so
  log p(x) and p(z|x) have closed forms (probabilistic PCA; Tipping & Bishop 1999).
- `NonlinearGaussian`: z ~ N(0, I_k) with k in {1, 2}, x | z ~ N(W h(z) + b, noise_std^2 I_d) with
  h(z) = z + curvature * z^2 elementwise. The posterior is not Gaussian (skewed, or bimodal when two
  values of z explain x equally well), so no Gaussian q is exact; log p(x) and p(z|x) come from
  quadrature on a grid, accurate to far below 1e-10 nats for the default grid while the posterior
  lies inside it (the x range is in `NonlinearGaussian`'s docstring).

Shapes: x is (B, d) or (..., d); z is (..., k). `log_joint(x, z)` broadcasts over leading sample
dimensions: z (K, B, k) with x (B, d) gives (K, B). `logvar` means log sigma^2 throughout vaelib.
"""

import math

import torch

from vaelib import _validate
from vaelib.distributions import LOG_2PI, _log_normal


class _GaussianNoiseModel:
    """Shared parts: standard-normal prior and isotropic Gaussian noise around a decoder mean."""

    latent_dim: int
    data_dim: int

    def _mean(self, z):  # (..., k) -> (..., d)
        raise NotImplementedError

    def _check_z(self, z):
        _validate.tensor("z", z, min_dim=1)
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (..., {self.latent_dim}), got {tuple(z.shape)}")

    def _check_x(self, x):
        _validate.tensor("x", x, min_dim=1)
        if x.shape[-1] != self.data_dim:
            raise ValueError(f"x must have shape (..., {self.data_dim}), got {tuple(x.shape)}")

    def log_prior(self, z):
        """log p(z) = log N(z; 0, I_k).  z: (..., k) -> (...)."""
        self._check_z(z)
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def log_likelihood(self, x, z):
        """log p(x | z) = log N(x; mean(z), noise_std^2 I_d).  x: (..., d), z: (..., k) -> broadcast
        (...)."""
        self._check_x(x)
        self._check_z(z)
        mean = self._mean(z)  # (..., d)
        _validate.broadcast(x=x, mean_of_z=mean)
        logvar = torch.full(
            (), 2.0 * math.log(self.noise_std), dtype=mean.dtype, device=mean.device
        )
        return _log_normal(x, mean, logvar)

    def log_joint(self, x, z):
        """log p(x, z) = log p(x | z) + log p(z).  x: (B, d), z: (..., B, k) -> (..., B)."""
        return self.log_likelihood(x, z) + self.log_prior(z)

    def _check_q(self, x, mu, logvar):
        self._check_x(x)
        for name, t in (("mu", mu), ("logvar", logvar)):
            _validate.tensor(name, t, min_dim=1)
            if t.shape[-1] != self.latent_dim:
                raise ValueError(
                    f"{name} must have shape (..., {self.latent_dim}), got {tuple(t.shape)}"
                )
        _validate.broadcast(x_batch=x[..., :1], mu=mu[..., :1], logvar=logvar[..., :1])

    def kl_to_posterior(self, x, mu, logvar):
        """KL(q(z|x) || p(z|x)) for q = N(mu, diag exp(logvar)), exactly: log p(x) - exact_elbo(x,
        mu, logvar).

        Args:
            x: (..., d); mu, logvar: (..., k) (broadcast against x's batch shape).
        Returns:
            (...) KL in nats.
        """
        return self.log_evidence(x) - self.exact_elbo(x, mu, logvar)

    def sample(self, n, generator=None):
        """Ancestral sampling: z ~ p(z), then x ~ p(x | z).  Returns (x (n, d), z (n, k))."""
        _validate.count("n", n)
        _validate.generator("generator", generator)
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=self.dtype)
        eps = torch.randn(n, self.data_dim, generator=generator, dtype=self.dtype)
        return self._mean(z) + self.noise_std * eps, z


class LinearGaussian(_GaussianNoiseModel):
    """z ~ N(0, I_k),  x | z ~ N(W z + b, noise_std^2 I_d): a model with exact evidence and
    posterior.

    Args:
        W: (d, k) loading matrix.
        b: (d,) offset.
        noise_std: observation noise standard deviation sigma > 0.
    The dtype of W sets the dtype of everything the model returns.
    """

    def __init__(self, W, b, noise_std):
        _validate.tensor("W", W, min_dim=2)
        if W.dim() != 2:
            raise ValueError(f"W must have shape (d, k), got {tuple(W.shape)}")
        _validate.tensor("b", b, min_dim=1)
        if tuple(b.shape) != (W.shape[0],):
            raise ValueError(
                f"b must have shape (d,) = ({W.shape[0]},) to match W {tuple(W.shape)}, got "
                f"{tuple(b.shape)}"
            )
        self.noise_std = _validate.positive_scalar("noise_std", noise_std)
        self.W = W
        self.b = b.to(W.dtype)
        self.dtype = W.dtype
        self.data_dim, self.latent_dim = W.shape

    def __repr__(self):
        return (
            f"LinearGaussian(data_dim={self.data_dim}, latent_dim={self.latent_dim}, "
            f"noise_std={self.noise_std:.4g})"
        )

    def _mean(self, z):
        return z.to(self.dtype) @ self.W.T + self.b

    def marginal_cov(self):
        """Covariance of the evidence: x ~ N(b, C) with C = W W^T + noise_std^2 I_d.  Returns (d,
        d)."""
        eye = torch.eye(self.data_dim, dtype=self.dtype)
        return self.W @ self.W.T + self.noise_std**2 * eye

    def log_evidence(self, x):
        """Exact log p(x) = log N(x; b, W W^T + noise_std^2 I).  x: (..., d) -> (...)."""
        self._check_x(x)
        L = torch.linalg.cholesky(self.marginal_cov())
        diff = (x.to(self.dtype) - self.b).unsqueeze(-1)  # (..., d, 1)
        sol = torch.linalg.solve_triangular(L.expand(*diff.shape[:-2], *L.shape), diff, upper=False)
        maha = (sol.squeeze(-1) ** 2).sum(-1)
        log_det = 2.0 * torch.log(torch.diagonal(L)).sum()
        return -0.5 * (self.data_dim * LOG_2PI + log_det + maha)

    def exact_elbo(self, x, mu, logvar):
        """The ELBO of q = N(mu, diag exp(logvar)) in closed form, no sampling.

        ELBO = E_q[log p(x | z)] + E_q[log p(z)] + H[q], with E_q[log p(x | z)] = log N(x; W mu + b,
        sigma^2 I) - tr(W diag(s^2) W^T) / (2 sigma^2), E_q[log p(z)] = -1/2 sum_j [log 2 pi +
        mu_j^2 + s_j^2],  H[q] = 1/2 sum_j [log 2 pi + 1 + logvar_j].

        Args:
            x: (..., d) observations; mu, logvar: (..., k) parameters of q (broadcast against x).
        Returns:
            (...) the ELBO in nats; equals log_evidence(x) exactly when q is the posterior (k = 1,
            or W with orthogonal columns, where the posterior covariance is diagonal).
        """
        self._check_q(x, mu, logvar)
        mu, logvar = mu.to(self.dtype), logvar.to(self.dtype)
        s2 = torch.exp(logvar)
        noise_logvar = torch.full((), 2.0 * math.log(self.noise_std), dtype=self.dtype)
        log_px_z = _log_normal(x.to(self.dtype), self._mean(mu), noise_logvar) - (
            s2 * (self.W**2).sum(0)
        ).sum(-1) / (2 * self.noise_std**2)
        log_pz = -0.5 * (LOG_2PI + mu**2 + s2).sum(-1)
        entropy = 0.5 * (LOG_2PI + 1.0 + logvar).sum(-1)
        return log_px_z + log_pz + entropy

    def posterior(self, x):
        """Exact Gaussian posterior p(z | x) = N(mean, cov).

        cov = (I_k + W^T W / sigma^2)^{-1},  mean = cov W^T (x - b) / sigma^2  (Bishop, PRML eq.
        12.42).

        Args:
            x: (B, d) or (..., d) observations.
        Returns:
            mean: (..., k); cov: (k, k), the same for every x.
        """
        self._check_x(x)
        s2 = self.noise_std**2
        precision = torch.eye(self.latent_dim, dtype=self.dtype) + self.W.T @ self.W / s2
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)
        mean = (x.to(self.dtype) - self.b) @ self.W @ cov.T / s2  # (..., k)
        return mean, cov

    @classmethod
    def fit_ml(cls, x, latent_dim):
        """Maximum-likelihood probabilistic PCA in closed form (Tipping & Bishop 1999, eqs. 7-8).

        b = mean of x; S = (1/N) sum (x - b)(x - b)^T with eigenvalues l_1 >= ... >= l_d;
        noise_std^2 = mean(l_{k+1..d});  W = U_k (diag(l_1..k) - noise_std^2 I)^{1/2}  (rotation R =
        I).

        Args:
            x: (N, d) data, N >= 2, with latent_dim < d.
            latent_dim: k, the number of latent dimensions.
        Returns:
            The maximum-likelihood LinearGaussian.
        """
        _validate.tensor("x", x, min_dim=2)
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"x must have shape (N, d) with N >= 2, got {tuple(x.shape)}")
        _validate.count("latent_dim", latent_dim)
        N, d = x.shape
        if latent_dim >= d:
            raise ValueError(
                f"latent_dim must be smaller than the data dimension d={d}, got {latent_dim}"
            )
        b = x.mean(0)
        xc = x - b
        S = xc.T @ xc / N
        evals, evecs = torch.linalg.eigh(S)  # ascending
        evals, evecs = evals.flip(0), evecs.flip(1)
        noise_var = evals[latent_dim:].mean()
        if not bool(noise_var > 0):
            raise ValueError(
                "x has no variance outside the top latent_dim directions; noise_std would be 0"
            )
        scale = torch.sqrt(torch.clamp(evals[:latent_dim] - noise_var, min=0.0))
        W = evecs[:, :latent_dim] * scale
        return cls(W, b, math.sqrt(noise_var.item()))


class NonlinearGaussian(_GaussianNoiseModel):
    """z ~ N(0, I_k), x | z ~ N(W h(z) + b, noise_std^2 I_d), h(z) = z + curvature * z^2, k in {1,
    2}.

    log p(x) and p(z | x) are computed by quadrature on a uniform grid over [-grid_limit,
    grid_limit]^k. The integrand is smooth and decays like the prior, so the rectangle rule
    converges faster than any power of the spacing, but only for the posterior mass that lies inside
    the box: the accuracy holds for a range of x, not for every x, and that range depends on
    noise_std (sigma). Measured for k=1, W=1, b=0 with the default grid (2001 points on [-7, 7]),
    |error of log p(x)| in nats against scipy.integrate.quad (curvature 1) or the closed form
    (curvature 0):

        curvature 1:  x in [-3, 35]: < 1e-10 for sigma = 0.1, 0.3 and 1.
                      x = 40 (root z = -6.85 of z + z^2 = x): < 1e-10 (sigma 0.1, 0.3), 9e-6 (1).
                      x = 45 (root z = -7.2, outside the box): 1.2e-3 for each of the three.
        curvature 0:  |x| <= 5: < 1e-10 for sigma = 0.1, 0.3 and 1.
                      x = 7:  0.26 (sigma 0.1), 0.022 (0.3), 4e-7 (1).
                      x = 10: 430 (sigma 0.1), 31 (0.3), 2e-3 (1).

    In general: keep the posterior inside |z| < grid_limit - 1, or widen grid_limit (and grid_points
    with it). tests/test_toy.py checks every figure above, the k=2 grid (301 points per axis)
    against a finer one, and curvature 0 against LinearGaussian.

    Args:
        W: (d, k) loading matrix, k in {1, 2}.
        b: (d,) offset.
        noise_std: observation noise sigma > 0.
        curvature: the non-linearity a in h(z) = z + a z^2 (0 gives the linear-Gaussian model).
        grid_limit: half-width of the quadrature box.
        grid_points: points per axis (default 2001 for k=1, 301 for k=2).
    """

    def __init__(self, W, b, noise_std, curvature=1.0, grid_limit=7.0, grid_points=None):
        _validate.tensor("W", W, min_dim=2)
        if W.dim() != 2 or W.shape[1] not in (1, 2):
            raise ValueError(
                f"W must have shape (d, k) with k in {{1, 2}} (quadrature grid), got "
                f"{tuple(W.shape)}"
            )
        _validate.tensor("b", b, min_dim=1)
        if tuple(b.shape) != (W.shape[0],):
            raise ValueError(
                f"b must have shape (d,) = ({W.shape[0]},) to match W {tuple(W.shape)}, got "
                f"{tuple(b.shape)}"
            )
        self.noise_std = _validate.positive_scalar("noise_std", noise_std)
        if (
            isinstance(curvature, bool)
            or not isinstance(curvature, (int, float))
            or not math.isfinite(curvature)
        ):
            raise ValueError(f"curvature must be a finite number, got {curvature!r}")
        self.curvature = float(curvature)
        self.grid_limit = _validate.positive_scalar("grid_limit", grid_limit)
        self.W = W
        self.b = b.to(W.dtype)
        self.dtype = W.dtype
        self.data_dim, self.latent_dim = W.shape
        if grid_points is None:
            grid_points = 2001 if self.latent_dim == 1 else 301
        self.grid_points = _validate.count("grid_points", grid_points, minimum=3)

    def __repr__(self):
        return (
            f"NonlinearGaussian(data_dim={self.data_dim}, latent_dim={self.latent_dim}, "
            f"noise_std={self.noise_std:.4g}, curvature={self.curvature:.4g})"
        )

    def _mean(self, z):
        z = z.to(self.dtype)
        return (z + self.curvature * z**2) @ self.W.T + self.b

    def exact_elbo(self, x, mu, logvar, nodes=10):
        """The ELBO of q = N(mu, diag exp(logvar)) by Gauss-Hermite quadrature, no sampling.

        ELBO = E_q[log p(x, z)] + H[q]; z = mu + sqrt(2) s t over the tensor grid of Gauss-Hermite
        nodes t. log p(x, z) is a polynomial of degree 4 in z, which n-node Gauss-Hermite integrates
        exactly for n >= 3 (exact for degree <= 2n - 1), so the default 10 nodes is exact up to
        round-off.

        Args:
            x: (..., d) observations; mu, logvar: (..., k) parameters of q (broadcast against x).
            nodes: Gauss-Hermite nodes per latent axis.
        Returns:
            (...) the ELBO in nats.
        """
        import numpy as np

        self._check_q(x, mu, logvar)
        _validate.count("nodes", nodes, minimum=3)
        t, w = np.polynomial.hermite.hermgauss(nodes)
        t, log_w = (
            torch.tensor(t, dtype=self.dtype),
            torch.log(torch.tensor(w / math.sqrt(math.pi), dtype=self.dtype)),
        )
        if self.latent_dim == 2:
            t1, t2 = torch.meshgrid(t, t, indexing="ij")
            t = torch.stack([t1.reshape(-1), t2.reshape(-1)], -1)  # (n*n, 2)
            log_w = (log_w[:, None] + log_w[None, :]).reshape(-1)
        else:
            t = t[:, None]  # (n, 1)
        mu, logvar = mu.to(self.dtype), logvar.to(self.dtype)
        lead = torch.broadcast_shapes(x.shape[:-1], mu.shape[:-1], logvar.shape[:-1])
        extra = (1,) * len(lead)
        z = mu + math.sqrt(2.0) * torch.exp(0.5 * logvar) * t.reshape(
            t.shape[0], *extra, self.latent_dim
        )  # (G, ..., k)
        weights = torch.exp(log_w).reshape(-1, *extra)  # (G, 1..)
        expected_log_joint = (weights * self.log_joint(x.to(self.dtype), z)).sum(0)
        entropy = 0.5 * (LOG_2PI + 1.0 + logvar).sum(-1)
        return expected_log_joint + entropy

    def grid(self):
        """The quadrature grid.  Returns (z (G, k) grid points, log_cell float: log of each cell's
        volume)."""
        axis = torch.linspace(-self.grid_limit, self.grid_limit, self.grid_points, dtype=self.dtype)
        step = (axis[1] - axis[0]).item()
        if self.latent_dim == 1:
            z = axis[:, None]  # (G, 1)
        else:
            z1, z2 = torch.meshgrid(axis, axis, indexing="ij")
            z = torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)  # (G*G, 2)
        return z, self.latent_dim * math.log(step)

    def _log_joint_grid(self, x):
        self._check_x(x)
        z, log_cell = self.grid()
        lead = x.shape[:-1]
        zg = z.reshape(z.shape[0], *([1] * len(lead)), self.latent_dim)  # (G, 1.., k)
        return z, self.log_joint(x.to(self.dtype), zg), log_cell  # (G, ...)

    def log_evidence(self, x):
        """log p(x) = log sum_grid p(x | z) p(z) dz by quadrature.  x: (..., d) -> (...)."""
        _, log_joint, log_cell = self._log_joint_grid(x)
        return torch.logsumexp(log_joint, 0) + log_cell

    def posterior_grid(self, x):
        """The posterior density on the grid.

        Args:
            x: (..., d) observations.
        Returns:
            z: (G, k) grid points; log_density: (G, ...) log p(z | x) at each grid point (a density:
            exp(log_density) * cell volume sums to 1 over the grid).
        """
        z, log_joint, log_cell = self._log_joint_grid(x)
        return z, log_joint - (torch.logsumexp(log_joint, 0) + log_cell)

    def posterior_moments(self, x):
        """Posterior mean (..., k) and covariance (..., k, k) of p(z | x), by quadrature."""
        z, log_joint, _ = self._log_joint_grid(x)
        w = torch.softmax(log_joint, 0)  # (G, ...) normalised weights
        extra = (1,) * (w.dim() - 1)
        zg = z.reshape(z.shape[0], *extra, self.latent_dim)  # (G, 1.., k)
        mean = (w.unsqueeze(-1) * zg).sum(0)  # (..., k)
        centred = zg - mean  # (G, ..., k)
        cov = (w[..., None, None] * centred.unsqueeze(-1) * centred.unsqueeze(-2)).sum(0)
        return mean, cov
