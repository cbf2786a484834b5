"""``python -m fakes.cli ARGS``: the real distillctl CLI on the fake Gaussian dataset (jobs of the submit tests).

Job subprocesses cannot see pytest's monkeypatches, so this wrapper installs the same test doubles
the in-process tests use (the fake dataset/encoder plugins of ``fakes.distill`` and its Gaussian
"embedding cache"), then runs ``distillctl.cli.main``. ``embed`` has nothing to compute for the fake
data and only reports the split sizes. Needs ``tests/`` on PYTHONPATH.
"""

from __future__ import annotations

import sys

from fakes import distill as distill_fakes


def install() -> None:
    import distillctl.plugins as plugins

    registry = plugins.load_registry(extra_plugins=[(distill_fakes, "tests", "0")])
    plugins.set_registry(registry)
    import distillctl.data.embed as embed_module

    def load_embeddings(recipe, *, quiet=None):
        emb = distill_fakes.gaussian_embeddings()
        emb.texts = lambda split: [f"{split} text {i}" for i in range(len(emb.splits[split].y))]
        return emb

    embed_module.load_embeddings = load_embeddings


def main(argv: list[str]) -> None:
    install()
    if argv[:1] == ["embed"]:
        emb = sys.modules["distillctl.data.embed"].load_embeddings(None)
        print("fake embed:", {k: tuple(v.X.shape) for k, v in emb.splits.items()})
        return
    from distillctl.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
