"""Check yourself, notebook 02 (The intractable marginal likelihood)."""

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="02.1",
        prompt=(
            "A tensor-product grid with G = 10 points per axis, in k = 6 latent dimensions: how "
            "many evaluations of p(x, z) does one log p(x) cost?"
        ),
        kind="number",
        answer=1e6,
        rtol=1e-9,
        reason="every combination of axis values is a node: G^k = 10^6 evaluations.",
        wrong=[
            Wrong(
                60.0,
                "the nodes are every combination of the axis values, not the axes one after "
                "another.",
            ),
            Wrong(
                6.0**10,
                "check which number is the base: the points per axis, raised to the number of "
                "axes.",
            ),
        ],
        hint="Re-read section 2: how many nodes does the tensor-product rule have?",
    ),
    Question(
        id="02.2",
        prompt=(
            "Naive Monte Carlo from the prior, with ρ = 4 (the variance of the normalised weight) "
            "and K = 400 samples: about how large is the error of log p̂(x), in nats?"
        ),
        kind="number",
        answer=0.1,
        rtol=1e-3,
        reason=(
            "the relative error of the average is √(ρ/K) = √(4/400) = 0.1, and by the delta "
            "method that is the error of its log in nats."
        ),
        wrong=[
            Wrong(
                0.01,
                "ρ/K is the variance of the relative error; the error is a standard deviation.",
            ),
            Wrong(
                0.005,
                "the square root applies to ρ/K as a whole: variances of an average scale as 1/K.",
            ),
        ],
        hint="Re-read section 3: the Monte Carlo rate and the delta method.",
    ),
    Question(
        id="02.3",
        prompt=(
            "k = 10 independent copies of a model, each with ρ + 1 = r = 2 for prior sampling. "
            "About how many prior samples K keep the error of log p̂(x) at 0.1 nats? "
            "(Use error ≈ √(ρ/K).)"
        ),
        kind="number",
        answer=(2.0**10 - 1) / 0.1**2,
        rtol=1e-3,
        reason=(
            "for independent copies the weights multiply, so ρ + 1 = 2^10 and ρ = 1023; "
            "K = ρ/0.1² ≈ 102,300."
        ),
        wrong=[
            Wrong(
                10 * (2.0 - 1) / 0.1**2,
                "ρ does not add up over independent dimensions: the weights multiply, and so "
                "does ρ + 1.",
            ),
            Wrong(
                (2.0**10 - 1) / 0.1,
                "the error is √(ρ/K): solve for K with the square of the error.",
            ),
        ],
        hint="Re-read the three lessons of section 3 (against k).",
    ),
    Question(
        id="02.4",
        prompt=(
            "You tuned one Gaussian proposal q(z) to the posterior of the first of 1000 data "
            "points and use it for all of them. For the other points, importance sampling's "
            "estimate of p(x) is ..."
        ),
        kind="choice",
        choices={
            "a": "unbiased, and as accurate as for the first point",
            "b": "unbiased, but its error grows fast with the distance between each point's "
            "posterior and q",
            "c": "biased, because q is not that point's posterior",
        },
        answer="b",
        reason=(
            "E_q[p(x, z)/q(z)] = p(x) for any q that is positive everywhere, but ρ grows like "
            "exp(δ²/(2c² − 1)): hence a proposal q(z|x) per data point, the encoder."
        ),
        wrong=[
            Wrong(
                "a",
                "ρ depends on how well q matches each point's posterior; which posterior does "
                "this q match?",
            ),
            Wrong(
                "c",
                "check the identity E_q[p(x, z)/q(z)] = p(x): what does it require of q?",
            ),
        ],
        hint="Re-read section 5 and its figure.",
    ),
]
