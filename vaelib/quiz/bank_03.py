"""Check yourself, notebook 03 (Jensen's inequality and the ELBO)."""

import math

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="03.1",
        prompt=(
            "Y = exp(τ ε) with ε ~ N(0, 1) and τ = 2. What is the Jensen gap "
            "log E[Y] − E[log Y], in nats?"
        ),
        kind="number",
        answer=2.0,
        rtol=1e-3,
        reason="E[log Y] = 0 and E[Y] = exp(τ²/2), so the gap is τ²/2 = 2 nats.",
        wrong=[
            Wrong(
                (math.exp(4.0) - 1) / 2,
                "that is the second-order approximation Var Y / (2 E[Y]²), which fails when Y "
                "spreads far from its mean.",
            ),
            Wrong(-2.0, "check the sign: for the concave log the gap is never negative."),
            Wrong(4.0, "check the mean of a log-normal: what is E[exp(τ ε)]?"),
        ],
        hint="Re-read section 1 (the log-normal example) and exercise 1.",
    ),
    Question(
        id="03.2",
        prompt=(
            "The exact posterior is p(z|x) = N(0, 1) and q = N(μ, σ²). Write log p(x) − ELBO as "
            "a function of μ and σ (answer = lambda mu, sigma: ...; use math.log)."
        ),
        kind="expression",
        answer=lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2)),
        at=[{"mu": 0.3, "sigma": 1.2}, {"mu": -1.5, "sigma": 0.4}, {"mu": 0.0, "sigma": 2.0}],
        reason=(
            "the gap is KL(q ‖ p(z|x)) = ½(μ² + σ² − 1 − log σ²): zero only when q is the "
            "posterior."
        ),
        wrong=[
            Wrong(
                lambda mu, sigma: 0.5 * ((1 + mu**2) / sigma**2 - 1 + math.log(sigma**2)),
                "that is the KL in the other direction; the ELBO's gap is an expectation under "
                "q, the distribution we sample from.",
            ),
            Wrong(
                lambda mu, sigma: -0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2)),
                "check the sign: the ELBO is a lower bound, so log p(x) − ELBO is never negative.",
            ),
            Wrong(
                lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma)),
                "the log term is of the variance σ², not of σ.",
            ),
        ],
        hint="Re-read section 4: the gap is a divergence between q and the posterior.",
    ),
    Question(
        id="03.3",
        prompt=(
            "You draw K = 10 samples z_i from q and compute log((1/10) Σ_i w_i), with "
            "w_i = p(x, z_i)/q(z_i), many times. The average of these values is ..."
        ),
        kind="choice",
        choices={
            "a": "log p(x): importance sampling is unbiased",
            "b": "below log p(x), and at or above the ELBO",
            "c": "above log p(x)",
        },
        answer="b",
        reason=(
            "the average of the w_i is unbiased for p(x), but the log of an average is biased "
            "low (Jensen): it is the bound L_10, between the ELBO (K = 1) and log p(x)."
        ),
        wrong=[
            Wrong(
                "a",
                "the average of the weights is unbiased for p(x); is the log of an unbiased "
                "estimate unbiased for the log?",
            ),
            Wrong("c", "which way does Jensen's inequality go for the concave log?"),
        ],
        hint="Re-read 'Why not maximise line (3) instead?' in section 4.",
    ),
    Question(
        id="03.4",
        prompt="For a fixed θ, which q maximises the ELBO, and what is the maximum?",
        kind="choice",
        choices={
            "a": "q = p(z), the prior; the maximum is log p_θ(x)",
            "b": "q = p_θ(z|x), the posterior; the maximum is log p_θ(x)",
            "c": "every q gives the same ELBO; it depends on θ only",
        },
        answer="b",
        reason=("log p_θ(x) − ELBO = KL(q ‖ p_θ(z|x)) ≥ 0, zero exactly when q is the posterior."),
        wrong=[
            Wrong(
                "a",
                "with q = p(z) the gap is the divergence from the prior to the posterior: is "
                "that zero once x has been observed?",
            ),
            Wrong("c", "the gap depends on q; re-read section 4."),
        ],
        hint="Re-read sections 4 and 5: where does the surface touch log p(x)?",
    ),
    Question(
        id="03.5",
        prompt="Maximising the ELBO over θ, with q held fixed, ...",
        kind="choice",
        choices={
            "a": "is maximum likelihood: it maximises log p_θ(x)",
            "b": "maximises log p_θ(x) − KL(q ‖ p_θ(z|x)), so it also favours θ whose posterior "
            "is close to q",
            "c": "cannot change log p_θ(x)",
        },
        answer="b",
        reason=(
            "the gap depends on θ through the posterior p_θ(z|x); the ELBO equals log p_θ(x) "
            "only where q is θ's exact posterior."
        ),
        wrong=[
            Wrong(
                "a",
                "the ELBO over θ is maximum likelihood only if the gap does not depend on θ; "
                "with q fixed, does it?",
            ),
            Wrong("c", "the ELBO's first term is E_q[log p_θ(x, z)]: it changes with θ."),
        ],
        hint="Write ELBO = log p_θ(x) − KL(q ‖ p_θ(z|x)) and ask which terms depend on θ.",
    ),
]
