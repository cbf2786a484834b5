"""Why `plan` cannot forecast `full-logreg` before the first `embed`: lbfgs's iterations on stand-in vectors.

`full`'s logistic regression fits one model per C of LOGREG_C_GRID; its time is the sum of lbfgs iterations,
and how many it needs depends on the data (how separable the classes are, how spread the vectors'
spectrum is). With the embedding cache missing, `plan` can only fit stand-in vectors. This script fits, on a
quarter of the training rows as `plan` does, the recipe's real vectors and stand-ins built from what a plan
could know (the labels; a sample of S real vectors, as many as it could afford to encode), and one oracle
built from every real vector (the classes' means and within-class covariance), then prints lbfgs's
iterations per C and the seconds. Needs the recipe's embedding cache (`distillctl embed RECIPE` first).

    OMP_NUM_THREADS=1 python benchmarks/logreg_stand_ins.py recipes/agnews-mlp-defaults.yaml
"""

from __future__ import annotations

import argparse
import time


def fit_grid(X, y, X_val, y_val, num_classes: int) -> tuple[float, list[int]]:
    """(seconds, lbfgs iterations per C, C ascending) of the fits `full-logreg` makes on ``X`` (n, d), ``y``
    (n,): the job's own function, each fit scored on the real val rows as there."""
    from distillctl.evaluation.baselines import logreg_reference

    t0 = time.perf_counter()
    fit = logreg_reference(X, y, X_val, y_val, X_val, y_val, num_classes)
    return time.perf_counter() - t0, [c["iterations"] for c in fit["val_by_C"]]


def stand_ins(X, y, k: int, num_classes: int, samples: list[int]):
    """``[(name, X_stand_in (k, d))]`` for the labels ``y[:k]``: what `plan` fits today, then stand-ins from a
    sample of S real training vectors, then the oracle."""
    import torch

    g = torch.Generator().manual_seed(0)
    n, d = X.shape
    yk = y[:k]
    out = [("random normal vectors (what plan fits)", torch.randn(k, d, generator=g))]

    def gaussian(mu, evals, evecs):  # class means + a Gaussian with this spectrum: (k, d)
        z = torch.randn(k, len(evals), generator=g) * evals.clamp_min(0).sqrt()
        return mu[yk] + z @ evecs.T

    for S in samples:
        s = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:S]
        V, L = X[s], y[s]  # the sample (S, d)
        mu = torch.stack([V[L == c].mean(0) for c in range(num_classes)])  # (C, d)
        R = V - mu[L]  # within-class residuals (S, d)
        spread = R.pow(2).sum(1).mean().sqrt() / d ** 0.5
        out.append((f"S={S}: class means + the sample's covariance",
                    mu[yk] + torch.randn(k, S, generator=g) / S ** 0.5 @ R))
        pick = torch.stack([torch.nonzero(L == c).flatten()[torch.randint(0, int((L == c).sum()), (1,), generator=g)]
                            for c in yk.tolist()]).flatten()
        out.append((f"S={S}: a sample row of its class + noise", V[pick] + torch.randn(k, d, generator=g) * spread))
    mu = torch.stack([X[y == c].mean(0) for c in range(num_classes)])
    R = X - mu[y]
    evals, evecs = torch.linalg.eigh(R.T @ R / n)
    out.append(("oracle: every row's class means + within-class covariance", gaussian(mu, evals, evecs)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--samples", default="64,256", help="sample sizes S, comma-separated (plan encodes 64)")
    args = ap.parse_args()

    import torch

    from distillctl.data import embed
    from distillctl.evaluation.protocol import split_of
    from distillctl.plan_measure import LOGREG_FRACTION, LOGREG_MIN_ROWS
    from distillctl.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    emb = embed.load_embeddings(recipe, quiet=True)
    train = split_of(emb, "train")
    n = len(train.y)
    k = min(n, max(LOGREG_MIN_ROWS, int(n * LOGREG_FRACTION)))  # the rows plan fits
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    X, y = train.X.float()[order], train.y.long()[order]  # the first k rows: plan's quarter
    print(f"{args.recipe}: {k} of {n} training rows, width {X.shape[1]}, {int(emb.num_classes)} classes\n")
    print("| vectors | seconds | lbfgs iterations per C (ascending C) | sum |")
    print("|---|---:|---|---:|")
    rows = [("the real vectors", X[:k])] + stand_ins(X, y, k, int(emb.num_classes),
                                                     [int(s) for s in args.samples.split(",")])
    val = split_of(emb, "val")
    import sklearn.linear_model  # noqa: F401  (its import is not the first fit's)

    for name, Xk in rows:
        seconds, iterations = fit_grid(Xk, y[:k], val.X.float(), val.y, int(emb.num_classes))
        print(f"| {name} | {seconds:.2f} | {', '.join(map(str, iterations))} | {sum(iterations)} |", flush=True)


if __name__ == "__main__":
    main()
