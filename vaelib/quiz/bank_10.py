"""Check-yourself questions for notebook 10 · Beyond the ELBO (issue 23 item 8)."""

import math

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="10.1",
        prompt=(
            "A VAE has log p(x) = -90.0 nats for one image; the best diagonal Gaussian q*_x has "
            "ELBO -93.0 and "
            "the encoder's q has ELBO -95.0. What is the amortization gap, in nats?"
        ),
        kind="number",
        answer=2.0,
        reason=(
            "amortization gap = ELBO(q*_x) - ELBO(encoder's q) = -93 - (-95) = 2: what the "
            "encoder loses "
            "against the best member of its own family."
        ),
        wrong=[
            Wrong(
                3.0,
                "That is the part the family of diagonal Gaussians cannot close, not the "
                "encoder's part.",
            ),
            Wrong(
                5.0,
                "That is the whole gap; it splits into two parts, and only one is the encoder's "
                "fault.",
            ),
            Wrong(
                -2.0, "Check the sign: both gaps are differences of a larger and a smaller number."
            ),
        ],
        hint=(
            "Re-read section 1: write the two differences of the decomposition with these three "
            "numbers."
        ),
    ),
    Question(
        id="10.2",
        prompt=(
            "A narrow Gaussian proposal q sits inside one mode of a posterior that holds 0.6 of "
            "the posterior "
            "mass, and (practically) never samples the other mode. Roughly what is log p(x) - "
            "IWAE_1000, in nats?"
        ),
        kind="number",
        answer=-math.log(0.6),
        rtol=0.02,
        reason=(
            "The average weight estimates only the covered mode's share, 0.6 p(x), so IWAE_K is "
            "stuck near "
            "log p(x) + log 0.6: a gap of -log 0.6 = 0.51 nats for any affordable K."
        ),
        wrong=[
            Wrong(
                0.0,
                "IWAE_K tends to log p(x) only once samples reach every mode; does this q ever "
                "get there?",
            ),
            Wrong(
                0.6,
                "The gap is in nats: what does a share of 0.6 of p(x) become after the logarithm?",
            ),
            Wrong(
                0.4,
                "0.4 is the mass that q misses; the estimate keeps the covered share, and the gap "
                "is in nats.",
            ),
            Wrong(
                math.log(0.6),
                "Check the sign: IWAE_K is a lower bound, so log p(x) - IWAE_K is >= 0.",
            ),
        ],
        hint=(
            "Re-read section 2: what does the average of the weights estimate if no sample "
            "reaches one mode?"
        ),
    ),
    Question(
        id="10.3",
        prompt=(
            "Prior z ~ N(0, 1), likelihood x | z ~ N(z, s^2). For a fixed decoder, the q that "
            "maximises "
            "E_q[log p(x|z)] - beta KL(q || p(z)) is Gaussian. Give its variance as a function "
            "of beta and s, "
            "e.g. lambda beta, s: ..."
        ),
        kind="expression",
        answer=lambda beta, s: beta * s**2 / (beta * s**2 + 1),
        at=[{"beta": 0.5, "s": 0.7}, {"beta": 1.0, "s": 2.0}, {"beta": 4.0, "s": 0.3}],
        reason=(
            "The best q is proportional to p(z) p(x|z)^(1/beta): precision 1 + 1/(beta s^2), so "
            "variance "
            "beta s^2 / (beta s^2 + 1); beta = 0.5 doubles the likelihood's precision."
        ),
        wrong=[
            Wrong(
                lambda beta, s: s**2 / (s**2 + 1),
                "That is the posterior (beta = 1); where does beta move the optimum of the "
                "beta-objective?",
            ),
            Wrong(
                lambda beta, s: s**2 / (s**2 + beta),
                "The likelihood is raised to a power: is it beta, or 1/beta? Divide the "
                "objective by beta first.",
            ),
            Wrong(
                lambda beta, s: beta * s**2 / (s**2 + 1),
                "beta does not scale the posterior's variance; it reweights the likelihood "
                "against the prior.",
            ),
        ],
        hint=(
            "Re-read the derivation at the end of section 3, then multiply two Gaussians in z "
            "(add precisions)."
        ),
    ),
    Question(
        id="10.4",
        prompt=(
            "The beta = 4 model of section 3 has its ELBO and IWAE_500 within about 0.1 nats of "
            "each other. "
            "What does that tell you?"
        ),
        kind="choice",
        choices={
            "a": "The model is a good density model: its bound is tight.",
            "b": (
                "q(z|x) is close to this model's posterior, here because the posterior is nearly "
                "the prior; the model itself is poor."
            ),
            "c": "IWAE has failed: it should always be well above the ELBO.",
            "d": "beta = 4 is the best setting, since its ELBO needs no correction.",
        },
        answer="b",
        reason=(
            "A tight bound means KL(q || p(z|x)) is small for this model; with a decoder that "
            "ignores z the "
            "posterior is the prior, which q matches, while log p(x) itself is 4 nats worse than "
            "at beta = 1."
        ),
        wrong=[
            Wrong(
                "a",
                "A tight bound measures q against this model's posterior, not the model against "
                "the data.",
            ),
            Wrong(
                "c",
                "IWAE_K exceeds the ELBO by at most the gap; how large is the gap when q is the "
                "posterior?",
            ),
            Wrong(
                "d",
                "Compare the models' log-likelihoods (IWAE_500), not how tight each one's bound "
                "is.",
            ),
        ],
        hint="Re-read the paragraph after the beta table: what is the gap log p(x) - ELBO made of?",
    ),
]
