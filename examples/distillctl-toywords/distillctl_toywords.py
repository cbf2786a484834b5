"""A third-party distillctl dataset: short generated sentences about a few topics (no files, no network).

Each sentence mixes words of its topic with common filler words, drawn from a seeded generator, so the
same options always give the same data: ``identity()`` is just the options (and a data version).
"""

import random

from pydantic import Field

from distillctl import UserError, hookimpl
from distillctl.options import PluginOptions
from distillctl.textdata import DatasetSource, TextDataset, finish_rows

TOPICS = {
    "sports": ["match", "goal", "team", "coach", "league", "score", "season", "player"],
    "science": ["atom", "cell", "theory", "experiment", "gene", "physics", "energy", "lab"],
    "business": ["market", "shares", "profit", "bank", "trade", "merger", "price", "earnings"],
}
FILLER = ["the", "a", "new", "report", "says", "after", "big", "week", "today", "with"]


class ToyWordsOptions(PluginOptions):
    topics: list[str] = Field(["sports", "science"], description=f"Classes, from {', '.join(TOPICS)}.")
    train_per_class: int = Field(30, ge=2, description="Training sentences per class.")
    test_per_class: int = Field(10, ge=1, description="Test sentences per class.")
    words: int = Field(8, ge=2, description="Words per sentence.")
    seed: int = Field(0, description="Seed of the generator (other seed, other sentences).")


class ToyWordsSource(DatasetSource):
    """Required: identity() and load(); describe() and name come from DatasetSource."""

    def __init__(self, options: ToyWordsOptions):
        unknown = [t for t in options.topics if t not in TOPICS]
        if unknown:  # the user must fix the recipe: exit 2 with this one line
            raise UserError(f"dataset.topics: unknown topic(s) {', '.join(unknown)}; known: {', '.join(TOPICS)}")
        self.options = options

    def identity(self) -> dict:
        return {"version": 1, **self.options.model_dump()}

    def load(self, *, bad_rows: str = "skip") -> TextDataset:
        o = self.options
        rng = random.Random(o.seed)
        splits = {}
        for split, n in (("train", o.train_per_class), ("test", o.test_per_class)):
            texts, labels = [], []
            for label, topic in enumerate(o.topics):
                for _ in range(n):
                    k = rng.randint(2, o.words - 1)  # topic words; the rest is filler
                    words = rng.choices(TOPICS[topic], k=k) + rng.choices(FILLER, k=o.words - k)
                    rng.shuffle(words)
                    texts.append(" ".join(words))
                    labels.append(label)
            notes: list[str] = []
            splits[split] = finish_rows(texts, None, labels, where=f"dataset.{split}", bad_rows=bad_rows,
                                        notes=notes, num_classes=len(o.topics), label_names=o.topics)
        return TextDataset(splits=splits, label_names=list(o.topics))  # no val: the core carves it from train


@hookimpl
def register_datasets(register):
    register("toywords", ToyWordsSource, options=ToyWordsOptions,
             description="generated topic sentences (sports / science / business), offline")
