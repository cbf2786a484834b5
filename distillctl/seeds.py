"""Every seed distillctl derives, in one place.

A recipe has one ``seed``; each random stream of a run gets its own seed derived from it here, so
the streams do not overlap and a newcomer can see all of them at once. The numbers are part of the
results (changing one changes every score that depends on it), so they never change silently.

=====================================  ==========================================================
stream                                 seed
=====================================  ==========================================================
embed: carve the test split            ``carve_seed(seed, "test")`` = ``seed + 1_000_003``
embed: carve the validation split      ``carve_seed(seed, "val")`` = ``seed``
distill: Boost-DD stage generator      ``stage_seed(seed, stage)``
distill: fresh validation students     ``val_seeds(seed, k)`` = ``VAL_SEED_BASE + seed*1000 + i``
distill: one outer step's students     ``draw_seed(generator)`` (from the stage generator)
eval / baseline: the K students        ``eval_seeds(seed, k)`` = ``seed*100000 + i``
training: student k's minibatches      ``derive_seed(k, BATCH_STREAM)``
training: dropout of the K students    ``derive_seed(seeds[0], DROPOUT_STREAM)``
baseline random: student k's subset    ``derive_seed(k, RANDOM_SUBSET_STREAM)``
distill mtt: expert student e          ``expert_seeds(seed, k)[e]`` = ``derive_seed(seed, 1000 + e)``
distill tokens: the initial model      ``token_init_seed(seed)`` = ``derive_seed(seed, TOKEN_INIT_STREAM)``
distill tokens: head pool seed i       ``derive_seed(init_seed, 7000 + i)``, i = 1..N-1
=====================================  ==========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: base of distill's validation-student seeds (kept apart from the small seeds ``eval`` uses)
VAL_SEED_BASE = 1_000_003
#: eval seeds are ``seed * EVAL_SEED_STRIDE + k``, k = 0..K-1
EVAL_SEED_STRIDE = 100_000
#: offset added to the recipe seed to carve a test split a dataset lacks (val uses the seed itself)
CARVE_SEED_OFFSETS = {"test": 1_000_003, "val": 0}

#: :func:`derive_seed` streams (a student seed's sub-streams)
BATCH_STREAM = 1  # minibatch order of one student (training.BatchStream)
DROPOUT_STREAM = 2  # the global RNG dropout layers draw from while K students train
RANDOM_SUBSET_STREAM = 3  # the ``random`` baseline's stratified draw for one student seed
TOKEN_INIT_STREAM = 4  # the head of the initial model a token-level set is distilled for (not an eval seed)
EXPERT_STREAM_BASE = 1000  # the ``mtt`` method's expert e uses stream EXPERT_STREAM_BASE + e of the recipe seed


def derive_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for stream ``stream`` of seed ``seed`` (splitmix64), so streams don't overlap.

    Streams in use: :data:`BATCH_STREAM`, :data:`DROPOUT_STREAM`, :data:`RANDOM_SUBSET_STREAM`.
    """
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) >> 1


def token_init_seed(seed: int) -> int:
    """The default ``distill.tokens.init_seed`` of a recipe with ``seed``: a head seed of its own stream, so
    the K fresh heads ``eval`` scores a token-level set from (``eval_seeds``) never include the head the set
    was distilled for."""
    return derive_seed(seed, TOKEN_INIT_STREAM)


def stage_seed(seed: int, stage: int) -> int:
    """The generator seed of Boost-DD stage ``stage`` (0-based) of a recipe with ``seed``.

    That generator drives the stage's synthetic initialisation and its outer steps (see :func:`draw_seed`).
    """
    return (seed * 1_000_003 + (stage + 1) * 7_919) % (2**63)


def val_seeds(seed: int, k: int) -> list[int]:
    """The seeds of distill's K fresh validation students: ``VAL_SEED_BASE + seed*1000 + [0, k)``."""
    return [VAL_SEED_BASE + seed * 1000 + i for i in range(k)]


def eval_seeds(seed: int, k: int) -> list[int]:
    """The K student seeds of every ``eval`` / ``baseline`` arm: ``seed * 100000 + [0, k)``."""
    return [seed * EVAL_SEED_STRIDE + i for i in range(k)]


def expert_seeds(seed: int, k: int) -> list[int]:
    """The seeds of the ``mtt`` method's k expert students (initialisation and minibatch streams)."""
    return [derive_seed(seed, EXPERT_STREAM_BASE + e) for e in range(k)]


def carve_seed(seed: int, split: str) -> int:
    """The seed of the stratified carve of split ``split`` ("test" or "val") from train, at embed time."""
    return seed + CARVE_SEED_OFFSETS[split]


def draw_seed(generator: "torch.Generator") -> int:
    """The seed of one outer step's fresh students (and their dropout masks), drawn from the generator."""
    import torch

    return int(torch.randint(0, 2**62, (1,), generator=generator))
