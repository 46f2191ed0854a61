"""The priors p(z) (vaelib.priors, registry PRIORS): log-densities and gradients against
torch.distributions' MixtureSameFamily, the Monte Carlo KL term against closed forms and
quadrature, sampling against the mixture's moments, the default prior unchanged, checkpoints and
resume bit for bit, and ELBO surgery with a learned prior.
"""

import hashlib
import math

import pytest
import scipy.integrate
import torch
from torch import distributions as td

from vaelib import aggregate, checkpoints, train
from vaelib.distributions import kl_normal
from vaelib.models import VAE
from vaelib.priors import log_mixture_normal
from vaelib.registry import PRIORS


def oracle_mixture(log_w, mu, logvar):
    """The same mixture as torch.distributions objects: the independent reference."""
    comp = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    return td.MixtureSameFamily(td.Categorical(logits=log_w), comp)


def random_mixture(C, k, seed):
    g = torch.Generator().manual_seed(seed)
    log_w = torch.log_softmax(torch.randn(C, generator=g, dtype=torch.float64), 0)
    mu = 2.0 * torch.randn(C, k, generator=g, dtype=torch.float64)
    logvar = torch.randn(C, k, generator=g, dtype=torch.float64) - 1.0
    return log_w, mu, logvar


def digest(model):
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data(n=120, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, D, generator=g, dtype=torch.float64), generator=g)


def model_with(prior, seed=0, **options):
    torch.manual_seed(seed)
    return VAE(12, 2, (16,), prior=prior, prior_options=options or None).double()


def test_declared_facts_equal_the_objects():
    for n in PRIORS.names():
        cls = PRIORS.get(n)
        assert (cls.name, cls.help, cls.scale) == (n, PRIORS.help(n), None)
    assert PRIORS.names() == ("normal", "mog", "vamp")


@pytest.mark.parametrize(
    "shape", [(7,), (4, 5), (3, 2, 6)], ids=["P", "B-P", "K-B-P"]
)  # leading shapes of z
@pytest.mark.parametrize("C,k", [(1, 1), (5, 3), (40, 2)], ids=["C1-k1", "C5-k3", "C40-k2"])
def test_log_mixture_normal_equals_mixture_same_family(shape, C, k):
    """Two routes to log p(z): the expanded matrix form against torch.distributions, to float64
    round-off (the expansion's error is about 1e-16 (|z| + |mu|)^2 / sigma^2 < 1e-11 here)."""
    log_w, mu, logvar = random_mixture(C, k, seed=C * 10 + k)
    z = 3.0 * torch.randn(
        *shape, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    torch.testing.assert_close(
        log_mixture_normal(z, log_w, mu, logvar),
        oracle_mixture(log_w, mu, logvar).log_prob(z),
        rtol=0,
        atol=1e-10,
    )


def test_log_mixture_normal_gradient_against_finite_differences_and_the_oracle():
    """gradcheck (central finite differences, float64) in z, weights, means and log-variances; and
    autograd through the torch.distributions oracle gives the same gradient."""
    log_w, mu, logvar = random_mixture(4, 2, seed=3)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    args = [t.clone().requires_grad_(True) for t in (z, log_w, mu, logvar)]

    def f(z, a, mu, logvar):
        return log_mixture_normal(z, torch.log_softmax(a, 0), mu, logvar)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)
    ours = torch.autograd.grad(f(*args).sum(), args)
    ref = torch.autograd.grad(
        oracle_mixture(torch.log_softmax(args[1], 0), args[2], args[3]).log_prob(args[0]).sum(),
        args,
    )
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_mog_and_vamp_log_prior_equal_the_oracle_value_and_gradient():
    """The model's log p(z) with each learned prior: the mixture of its own parameters (MoG) or of
    the encoder's Gaussians at the clipped pseudo-inputs (VampPrior), as MixtureSameFamily; the
    gradients in every prior parameter and in the encoder's weights agree."""
    z = torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for prior, opts in (("mog", {"n_components": 3}), ("vamp", {"n_components": 7})):
        model = model_with(prior, **opts)
        if prior == "vamp":  # spread the pseudo-inputs over and beyond [0, 1]: clipping matters
            with torch.no_grad():
                model.prior.pseudo_inputs.uniform_(-0.5, 1.5)
            mu, logvar = model.encode(model.prior.pseudo_inputs.clamp(0, 1))
            log_w = torch.zeros(7, dtype=torch.float64)
        else:
            p = model.prior
            log_w, mu, logvar = p.logits, p.mu, p.logvar
        params = [p for p in model.parameters() if p.requires_grad]
        ours = model.log_prior(z)
        ref = oracle_mixture(log_w, mu, logvar).log_prob(z)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
        g1 = torch.autograd.grad(ours.sum(), params, allow_unused=True)
        g2 = torch.autograd.grad(ref.sum(), params, allow_unused=True)
        for a, b in zip(g1, g2):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        assert any(a is not None and bool(a.abs().sum() > 0) for a in g1[-1:])  # the prior's own


def test_default_prior_is_the_standard_normal_with_the_same_config_weights_and_numbers():
    """VAE() without a prior: no prior keys in the config or state dict (old checkpoints compare
    equal), the same initial weights as a model built before priors existed would draw (the prior
    draws nothing), the closed-form KL; and a one-component MoG fixed at N(0, I) gives the same
    log p(z) and, averaged, the same KL by Monte Carlo."""
    torch.manual_seed(0)
    model = VAE(12, 2, (16,)).double()
    assert "prior" not in model.config and "prior_options" not in model.config
    assert not any(k.startswith("prior") for k in model.state_dict())
    assert model.prior.name == "normal" and list(model.prior.parameters()) == []
    torch.manual_seed(0)
    x = data()
    terms = model.elbo_terms(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(terms.kl, kl_normal(*model.encode(x)), rtol=0, atol=0)
    z = torch.randn(4, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(
        model.log_prior(z), td.Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=0, atol=1e-14
    )
    mog = model_with("mog", n_components=1)
    mog.load_state_dict(
        {k: v for k, v in model.state_dict().items()}
        | {"prior.logits": torch.zeros(1), "prior.mu": torch.zeros(1, 2)}
        | {"prior.logvar": torch.zeros(1, 2)},
    )
    torch.testing.assert_close(mog.log_prior(z), model.log_prior(z), rtol=0, atol=1e-12)
    mc = mog.elbo_terms(x, n_samples=4000, generator=torch.Generator().manual_seed(2)).kl
    # per example: 4000 draws of log q - log p; their sd is below 2 nats here, so 5 SE < 0.16
    torch.testing.assert_close(mc, terms.kl, rtol=0, atol=0.16)


def test_monte_carlo_kl_is_unbiased_against_closed_form_and_quadrature():
    """E[kl estimate] = KL(q(z | x) || p(z)): one component against kl_normal's closed form (k = 2),
    three components against scipy quadrature (k = 1). 40 repeats of K = 500 draws; the mean of
    the repeats must lie within 4 standard errors of the exact value (a chance of about 6e-5 to
    fail when right)."""
    x = data(n=3)
    for C, k in ((1, 2), (3, 1)):
        torch.manual_seed(C)
        model = VAE(12, k, (16,), prior="mog", prior_options={"n_components": C}).double()
        mu, logvar = (t.detach() for t in model.encode(x))
        p = model.prior
        if C == 1:
            exact = kl_normal(mu, logvar, p.mu.detach(), p.logvar.detach())
        else:
            mix = oracle_mixture(torch.log_softmax(p.logits.detach(), 0), p.mu.detach(), p.logvar)

            def kl_1d(m, lv):
                q = td.Normal(m, math.exp(0.5 * lv))

                def f(t):
                    zt = torch.tensor([[t]], dtype=torch.float64)
                    lq = q.log_prob(zt[0, 0])
                    return float(torch.exp(lq) * (lq - mix.log_prob(zt)[0]))

                s = math.exp(0.5 * lv)
                return scipy.integrate.quad(f, m - 12 * s, m + 12 * s, epsabs=1e-12, limit=200)[0]

            with torch.no_grad():
                exact = torch.tensor([kl_1d(float(m), float(lv)) for m, lv in zip(mu, logvar)])
        g = torch.Generator().manual_seed(10 + C)
        with torch.no_grad():
            reps = torch.stack([model.elbo_terms(x, 500, g).kl for _ in range(40)])  # (40, B)
        se = reps.std(0) / math.sqrt(40)
        assert ((reps.mean(0) - exact.to(reps)).abs() <= 4 * se).all(), (reps.mean(0), exact, se)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_samples_follow_the_prior(prior):
    """VAE.sample draws z from the learned prior: the draws' mean and second moment match the
    mixture's exact ones (from its components) to 5 standard errors (20,000 draws)."""
    model = model_with(prior, n_components=4)
    if prior == "mog":
        with torch.no_grad():
            model.prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
        w = torch.softmax(model.prior.logits.detach(), 0)
        mu, var = model.prior.mu.detach(), torch.exp(model.prior.logvar.detach())
    else:
        with torch.no_grad():
            model.prior.pseudo_inputs.uniform_(0, 1)
            mu, logvar = model.prior.components(model.encode)
        w, var = torch.full((4,), 0.25, dtype=torch.float64), torch.exp(logvar)
    n, g = 20000, torch.Generator().manual_seed(3)
    draw = lambda fn, *shape: fn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        z = model.prior.sample(n, model.encode, draw)  # (n, k)
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None] * (var + mu**2)).sum(0)
    for stat, exact in ((z, mean), (z**2, second)):
        se = stat.std(0) / math.sqrt(n)
        assert ((stat.mean(0) - exact).abs() <= 5 * se).all()
    images = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, 12) and bool(((images > 0) & (images < 1)).all())


def test_bad_prior_arguments_are_refused():
    with pytest.raises(
        ValueError, match=r"prior must be one of 'normal', 'mog', 'vamp', got 'flow'"
    ):
        VAE(12, 2, prior="flow")
    with pytest.raises(ValueError, match=r"prior_options for prior='vamp' take n_components, "):
        VAE(12, 2, prior="vamp", prior_options={"components": 3})
    with pytest.raises(ValueError, match=r"prior_options for prior='normal' take none"):
        VAE(12, 2, prior_options={"n_components": 3})
    with pytest.raises(TypeError, match=r"prior_options\['n_components'\] must be an int"):
        VAE(12, 2, prior="mog", prior_options={"n_components": 2.5})
    with pytest.raises(ValueError, match=r"prior_options\['n_components'\] must be >= 1"):
        VAE(12, 2, prior="vamp", prior_options={"n_components": 0})
    with pytest.raises(ValueError, match=r"prior_options\['init_std'\] must be a finite positive"):
        VAE(12, 2, prior="vamp", prior_options={"init_std": -1.0})
    with pytest.raises(TypeError, match=r"prior_options must be a dict"):
        VAE(12, 2, prior="vamp", prior_options=[("n_components", 3)])


def test_a_vampprior_beyond_memory_fails_up_front_naming_the_option(monkeypatch):
    """Pseudo-inputs (C, D) with gradients and Adam state beyond the machine's memory: one
    ValueError naming prior_options['n_components'] (and the CLI's --prior-components), before
    anything big is allocated."""
    from vaelib import _memory

    monkeypatch.setattr(_memory, "LIMIT_BYTES", 64 * 2**20)  # pretend 64 MiB
    VAE(784, 2, prior="vamp", prior_options={"n_components": 1000})  # 12.5 MB: fits
    with pytest.raises(ValueError, match=r"VampPrior of 10000 pseudo-inputs .*--prior-components"):
        VAE(784, 2, prior="vamp", prior_options={"n_components": 10_000})  # 125 MB: does not


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_checkpoint_rebuilds_the_prior_and_a_resumed_run_equals_the_uninterrupted_one(
    prior, tmp_path
):
    """save/load rebuilds the prior from the config (same log p(z)); 2 epochs, save, load, 1 more
    epoch gives the weights of 3 uninterrupted epochs bit for bit (prior parameters included)."""
    x = data()
    opts = {"n_components": 5}
    full = model_with(prior, **opts)
    train.fit(full, x, 3, batch_size=40, seed=1, progress=False, device="cpu")
    part = model_with(prior, **opts)
    h = train.fit(part, x, 2, batch_size=40, seed=1, progress=False, device="cpu")
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", part, history=h)
    ck = checkpoints.load_checkpoint(path, with_state=True)
    assert ck.model.config == part.config and ck.model.config["prior"] == prior
    assert ck.model.config["prior_options"]["n_components"] == 5
    z = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(ck.model.log_prior(z), part.log_prior(z), rtol=0, atol=0)
    train.fit(
        ck.model, x, 1, batch_size=40, seed=1, progress=False, device="cpu", history=ck.history
    )
    assert digest(ck.model) == digest(full)
    assert any(k.startswith("prior.") for k in full.state_dict())
    into = model_with(prior, seed=9, **opts)  # load into a model you built
    checkpoints.load_checkpoint(path, model=into)
    assert digest(into) == digest(part)


def test_fit_trains_the_prior_parameters():
    """fit's optimizer holds the prior's parameters: on the digits the VampPrior's pseudo-inputs
    move, and the training ELBO rises."""
    from vaelib import data as vdata

    x = vdata.load("digits", "train")[0][:300].double()
    torch.manual_seed(0)
    model = VAE(64, 2, (32,), prior="vamp", prior_options={"n_components": 10}).double()
    before = model.prior.pseudo_inputs.detach().clone()
    h = train.fit(model, x, 5, batch_size=50, lr=3e-3, seed=0, progress=False, device="cpu")
    assert h["elbo"][-1] > h["elbo"][0] + 1.0, h["elbo"]
    assert not torch.equal(before, model.prior.pseudo_inputs.detach())


def test_surgery_mc_with_a_given_prior():
    """surgery_mc(log_prior=...): the standard normal passed explicitly reproduces the default's
    numbers on the same draws; with a shifted, scaled Gaussian prior the average KL estimate is
    unbiased against kl_normal's closed form (20 repeats, within 4 standard errors) and equals
    mutual_info + marginal_kl draw by draw."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(30, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(30, 2, generator=g, dtype=torch.float64) - 1.0
    std = td.Normal(torch.zeros(2, dtype=torch.float64), 1.0)
    a = aggregate.surgery_mc(mu, logvar, 500, generator=torch.Generator().manual_seed(1))
    b = aggregate.surgery_mc(
        mu,
        logvar,
        500,
        generator=torch.Generator().manual_seed(1),
        log_prior=lambda z: std.log_prob(z).sum(-1),
    )
    assert math.isclose(a.marginal_kl, b.marginal_kl, rel_tol=0, abs_tol=1e-12)
    assert a.mutual_info == b.mutual_info and bool(torch.isnan(b.marginal_kl_per_dim).all())
    m, lv = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, -0.2]).double()
    shifted = td.Normal(m, torch.exp(0.5 * lv))
    reps = []
    for s in range(20):
        e = aggregate.surgery_mc(
            mu,
            logvar,
            500,
            generator=torch.Generator().manual_seed(100 + s),
            log_prior=lambda z: shifted.log_prob(z).sum(-1),
        )
        assert math.isclose(e.average_kl, e.mutual_info + e.marginal_kl, abs_tol=1e-10)
        reps.append(e.average_kl)
    reps = torch.tensor(reps)
    exact = kl_normal(mu, logvar, m, lv).mean()
    assert abs(reps.mean() - exact) <= 4 * reps.std() / math.sqrt(20)
    with pytest.raises(ValueError, match=r"log_prior\(z\) must return a tensor of shape \(500,\)"):
        aggregate.surgery_mc(mu, logvar, 500, log_prior=lambda z: z)
