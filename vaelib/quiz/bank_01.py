"""Check yourself, notebook 01 (Bayes' rule and latent variables)."""

import math

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="01.1",
        prompt=(
            "Linear-Gaussian model with k = 1, prior p(z) = N(0, 1), W = (1, 0.5)ᵀ, b = 0 and "
            "model noise σ_x = 0.5. What is the posterior variance S of z given x (it is the same "
            "for every x)?"
        ),
        kind="number",
        answer=1 / 6,
        rtol=1e-3,
        reason=(
            "S = (1 + WᵀW/σ_x²)⁻¹ = 1/(1 + 1.25/0.25) = 1/6: the prior's precision 1 plus the "
            "likelihood's precision 5."
        ),
        wrong=[
            Wrong(
                0.2,
                "you used the likelihood alone (σ_x²/‖W‖²); the prior also carries information "
                "about z, and precisions add.",
            ),
            Wrong(6.0, "that is the posterior precision; the question asks for its inverse."),
            Wrong(
                0.25,
                "that is σ_x², the noise variance of x given z, not the uncertainty about z "
                "given x.",
            ),
        ],
        hint="Re-read section 3: complete the square in log p(x|z) + log p(z).",
    ),
    Question(
        id="01.2",
        prompt=(
            "Bayes' rule read backwards: at any z, log p(x) can be written with "
            "log_lik = log p(x|z), log_prior = log p(z) and log_post = log p(z|x). Write it "
            "(answer = lambda log_lik, log_prior, log_post: ...)."
        ),
        kind="expression",
        answer=lambda log_lik, log_prior, log_post: log_lik + log_prior - log_post,
        at=[
            {"log_lik": -1.2, "log_prior": -0.9, "log_post": 0.3},
            {"log_lik": -4.0, "log_prior": -2.5, "log_post": -1.1},
            {"log_lik": 0.5, "log_prior": -1.0, "log_post": 0.2},
        ],
        reason=(
            "p(x) = p(x|z) p(z) / p(z|x): the joint divided by the posterior, the same number "
            "for every z."
        ),
        wrong=[
            Wrong(
                lambda log_lik, log_prior, log_post: log_lik + log_prior + log_post,
                "check the sign of the log-posterior term: solve Bayes' rule for p(x) step by "
                "step.",
            ),
            Wrong(
                lambda log_lik, log_prior, log_post: log_lik + log_prior,
                "that is the log joint at this z; it changes with z, and p(x) does not.",
            ),
            Wrong(
                lambda log_lik, log_prior, log_post: log_lik - log_post,
                "a factor is missing: the joint is the likelihood times the prior.",
            ),
        ],
        hint="Write Bayes' rule p(z|x) = p(x|z) p(z) / p(x) and solve it for p(x).",
    ),
    Question(
        id="01.3",
        prompt=(
            "Counting the prior twice: with p(z) = N(0, I_k) and k = 2, what is the integral over "
            "x of ∫ p(x, z) p(z) dz, whatever the decoder p(x|z)?"
        ),
        kind="number",
        answer=1 / (4 * math.pi),
        rtol=1e-3,
        reason=(
            "integrate over x first (∫ p(x|z) dx = 1), leaving ∫ p(z)² dz = (4π)^(−k/2) = "
            "1/(4π) ≈ 0.0796 for k = 2: not a density in x."
        ),
        wrong=[
            Wrong(
                1.0,
                "that would hold for the evidence ∫ p(x|z) p(z) dz; here the joint already "
                "contains the prior and it is multiplied in again.",
            ),
            Wrong(
                1 / math.sqrt(4 * math.pi),
                "that is the value for one latent dimension; each dimension of z contributes its "
                "own factor.",
            ),
        ],
        hint="Re-read section 6: integrate over x first, then over z.",
    ),
    Question(
        id="01.4",
        prompt=(
            "Non-linear model, x = 1: the posterior has modes near z = −1.59 and z = 0.61, and "
            "its mean is 0.03. Which statement is right?"
        ),
        kind="choice",
        choices={
            "a": "the posterior mean z = 0.03 is the single best explanation of x = 1",
            "b": "a Gaussian with the posterior's mean and variance peaks where the posterior "
            "is low",
            "c": "the left mode has less mass because p(x|z) is smaller at z ≈ −1.6",
        },
        answer="b",
        reason=(
            "the mean of a bimodal posterior sits in the valley between the modes; a Gaussian "
            "with that mean puts its peak there."
        ),
        wrong=[
            Wrong(
                "a",
                "mean and mode differ for a bimodal density: where does the mean sit relative to "
                "the two bumps?",
            ),
            Wrong(
                "c",
                "compare the decoder mean z + z² at the two roots: the likelihood is the same at "
                "both; another factor of the joint differs.",
            ),
        ],
        hint="Re-read section 4 and its figure (the dashed Gaussian).",
    ),
]
