"""Score a token-level set by replaying the fine-tuning it was distilled for, on (a fixed draw of) test.

    python benchmarks/token_set_replay.py RUN_DIR [--ipc 1] [--heads 5] [--random 5] [--test-rows N] [--json OUT]

Arms, each the pretrained model fine-tuned for the set's ``inner_steps`` plain SGD steps (the replay
distill validates with, :func:`distillctl.distillation.tokens.finetune_and_score`):

- ``distilled-init``: from the initial model (``init_seed``) at the set's learned lr: what the set was made for;
- ``distilled, fresh heads``: the same replay from ``--heads`` other head seeds (how the set transfers);
- ``random real, init``: ``--random`` stratified draws of ipc real training texts per class (their input
  embeddings and masks, hard labels), the same replay from the initial model at the recipe's inner lr
  and at the set's learned lr (the better of the two is the reference).

A cheap check of a set where `eval`'s K-seed fine-tuning does not fit the time (a loaded CPU): it is not
the `eval` protocol (no training budget, one replay), and ``--test-rows`` scores a fixed random draw of
test (the whole of it by default). Prints a table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str]) -> int:
    import torch

    import distillctl
    from distillctl.data.embed import load_embeddings
    from distillctl.distillation.tokens import InnerSteps, TokenRows, TokenSpace, finetune_and_score
    from distillctl.evaluation.training import student_builder
    from distillctl.runs import open_run_dir
    from distillctl.seeds import derive_seed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--ipc", type=int, default=None)
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--random", type=int, default=5)
    ap.add_argument("--test-rows", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    # 1. the set, the recipe it was distilled with, the token cache's train and test rows
    syn = distillctl.load_set(args.run_dir, ipc=args.ipc)
    recipe = open_run_dir(args.run_dir).load_recipe()
    emb = load_embeddings(recipe, quiet=True)
    train, test = emb.splits["train"], emb.splits["test"]
    rows, y = TokenRows.of(test), test.y
    if args.test_rows and args.test_rows < len(rows):
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[: args.test_rows].sort().values
        rows, y = rows[keep], y[keep]
    C, steps = syn.num_classes, int(syn.meta["inner_steps"])
    build = student_builder(recipe, int(emb.dim), C)
    t0 = time.perf_counter()
    # the head fitted first as the set was distilled (meta head_first: none | sgd | ridge), in every arm
    space = TokenSpace.build(build, init_seed=int(syn.meta["init_seed"]), head_pool=1 + args.heads,
                             head_first=str(syn.meta.get("head_first") or "none"))
    inner = InnerSteps.from_settings(recipe.distill.inner)
    hard = torch.arange(C).repeat_interleave(syn.ipc)
    learn = {"x": syn.x, "log_lr": torch.tensor(syn.inner_lr).log()}
    if syn.soft:
        learn["label_logits"] = syn.labels.clamp_min(1e-12).log()  # softmax(log p) = p

    def score(tensors: dict, mask, seeds) -> list[float]:
        return finetune_and_score(space.for_stage(mask), tensors, hard, C, inner, steps, rows, y, seeds=seeds)

    # 2. the arms
    out = {"run_dir": str(args.run_dir), "ipc": syn.ipc, "inner_steps": steps, "inner_lr": syn.inner_lr,
           "init_seed": syn.meta["init_seed"], "head_first": syn.meta.get("head_first") or "none",
           "test_rows": len(rows)}
    out["distilled-init"] = score(learn, syn.mask, space.head_seeds[:1])
    out["distilled, fresh heads"] = score(learn, syn.mask, space.head_seeds[1:])
    rnd = {"recipe lr": [], "learned lr": []}
    for k in range(args.random):  # a stratified draw of ipc real texts per class, class-major
        g = torch.Generator().manual_seed(derive_seed(recipe.seed, 9000 + k))
        pick = torch.cat([(train.y == c).nonzero().squeeze(1)[torch.randperm(int((train.y == c).sum()),
                                                                              generator=g)[: syn.ipc]]
                          for c in range(C)])
        real = TokenRows.of(train)[pick]
        x = space.embed(real)
        mask = real.mask.float()
        rnd["recipe lr"] += score({"x": x}, mask, space.head_seeds[:1])
        rnd["learned lr"] += score({"x": x, "log_lr": torch.tensor(syn.inner_lr).log()}, mask, space.head_seeds[:1])
    out["random real, init"] = rnd
    out["seconds"] = round(time.perf_counter() - t0, 1)

    # 3. the table
    def cell(values):
        if not values:  # --random 0 / --heads 0: the arm was not run
            return "–"
        if len(values) == 1:
            return f"{values[0] * 100:.2f}"
        return f"{statistics.mean(values) * 100:.2f} ± {statistics.pstdev(values) * 100:.2f} (n={len(values)})"

    print(f"{args.run_dir} ipc {syn.ipc}: {steps} inner SGD step(s) at lr {syn.inner_lr:.4g} (random: also "
          f"{recipe.distill.inner.lr:g}), test rows {len(rows)}")
    print(f"  distilled-init           {cell(out['distilled-init'])}")
    print(f"  distilled, fresh heads   {cell(out['distilled, fresh heads'])}")
    for name, values in rnd.items():
        print(f"  random real ({name:10s}) {cell(values)}")
    print(f"  ({out['seconds']} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
