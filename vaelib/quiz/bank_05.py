"""Check yourself, notebook 05 (MCMC versus variational inference)."""

import math

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="05.1",
        prompt=(
            "Random-walk Metropolis-Hastings is at z with log p(x, z) = -3.0 and proposes z' with "
            "log p(x, z') = -4.0. With what probability does it accept z'?"
        ),
        kind="number",
        answer=math.exp(-1.0),
        rtol=1e-3,
        reason=(
            "alpha = min(1, p(x, z') / p(x, z)) = min(1, exp(-4 - (-3))) = exp(-1) ≈ 0.368; the "
            "evidence p(x) cancels in the ratio."
        ),
        wrong=[
            Wrong(
                1.0,
                "a move to higher density is always accepted; is this move up or down in "
                "log p(x, z)?",
            ),
            Wrong(-1.0, "that is the log of the ratio; the probability is the ratio itself."),
            Wrong(
                math.e,
                "a probability cannot exceed 1: check which density goes on top of the ratio, "
                "and the min(1, ...).",
            ),
        ],
        hint=(
            "Re-read step 2 of section 2: the acceptance probability is min(1, a ratio of "
            "densities)."
        ),
    ),
    Question(
        id="05.2",
        prompt="What does Metropolis-Hastings evaluate to sample the posterior p(z | x)?",
        kind="choice",
        choices={
            "a": "the normalised posterior p(z | x), hence the evidence p(x)",
            "b": "only the log-joint log p(x, z) at the current and proposed z",
            "c": "the gradient of log p(x, z)",
        },
        answer="b",
        reason=(
            "p(z' | x) / p(z | x) = p(x, z') / p(x, z): the evidence cancels, so the log-joint is "
            "all it needs."
        ),
        wrong=[
            Wrong(
                "a",
                "write the acceptance ratio p(z' | x) / p(z | x) with Bayes' rule: what happens "
                "to p(x)?",
            ),
            Wrong(
                "c",
                "a random-walk proposal z' = z + lambda eps uses no gradient; look at what the "
                "accept step compares.",
            ),
        ],
        hint="Re-read section 2: which quantity appears in the accept test?",
    ),
    Question(
        id="05.3",
        prompt=(
            "An encoder is trained for 1,000 steps on 200 points with 10 samples each. "
            "Per-point VI uses 200 steps of 10 samples for every point. At how many points N do "
            "the two cost the same number of log-joint evaluations (the break-even)?"
        ),
        kind="number",
        answer=1000.0,
        rtol=1e-3,
        reason=(
            "training: 1,000 x 200 x 10 = 2,000,000 evaluations once; per-point VI: 200 x 10 = "
            "2,000 per point; 2,000,000 / 2,000 = 1,000."
        ),
        wrong=[
            Wrong(
                200.0,
                "the training set size is not the break-even: compare the two total counts.",
            ),
            Wrong(
                2_000_000.0,
                "that is the encoder's total cost; the break-even is a number of points, so "
                "divide by the cost of one point.",
            ),
            Wrong(
                10_000.0,
                "count the per-point cost as steps x samples, for one point.",
            ),
        ],
        hint=(
            "Re-read section 5's count: the encoder's total against N times the cost of one point."
        ),
    ),
    Question(
        id="05.4",
        prompt=(
            "You run VI with a Gaussian q from 100 different starts on a posterior whose left mode "
            "holds 26 % of the mass. Which is true?"
        ),
        kind="choice",
        choices={
            "a": "about 26 runs end on the left mode, as VI samples the modes by their mass",
            "b": "each run returns one Gaussian on one mode; the fraction depends on the starts "
            "and the step size, and the best ELBO picks the better mode",
            "c": "every run ends between the modes, at the posterior mean",
        },
        answer="b",
        reason=(
            "VI is an optimiser, not a sampler: each run climbs to a local maximum of the ELBO, "
            "and restarts are compared by their ELBO."
        ),
        wrong=[
            Wrong(
                "a",
                "that is what a sampler does; VI returns the end point of an optimisation, "
                "whatever the modes' masses.",
            ),
            Wrong(
                "c",
                "the reverse KL charges q for mass where the posterior has almost none; what is "
                "the posterior's density between the modes?",
            ),
        ],
        hint="Re-read section 3 and its figure: where does each fitted q end?",
    ),
]
