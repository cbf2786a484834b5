"""distillctl.seeds: every derived seed keeps its exact value (they are part of every result)."""

import torch

from distillctl import seeds


def test_numbers_are_pinned():
    assert seeds.derive_seed(0, 1) == 6008695631215161454
    assert seeds.derive_seed(1, seeds.RANDOM_SUBSET_STREAM) == 6346907163111484781
    assert seeds.stage_seed(7, 0) == 7 * 1_000_003 + 7_919
    assert seeds.stage_seed(7, 2) == 7 * 1_000_003 + 3 * 7_919
    assert seeds.VAL_SEED_BASE == 1_000_003
    assert seeds.val_seeds(2, 3) == [1_002_003, 1_002_004, 1_002_005]
    assert seeds.eval_seeds(3, 2) == [300_000, 300_001]
    assert seeds.carve_seed(5, "test") == 1_000_008 and seeds.carve_seed(5, "val") == 5


def test_derive_seed_is_63_bit_and_streams_differ():
    values = {seeds.derive_seed(s, st) for s in range(20) for st in (1, 2, 3)}
    assert len(values) == 60
    assert all(0 <= v < 2**63 for v in values)


def test_draw_seed_follows_the_generator():
    a, b = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    drawn = [seeds.draw_seed(a) for _ in range(3)]
    assert drawn == [seeds.draw_seed(b) for _ in range(3)]
    # pinned like the derived seeds: torch's CPU generator, torch.randint(0, 2**62)
    assert drawn == [3325388913236545215, 359254775711865947, 3933187637257539511]
    assert seeds.draw_seed(torch.Generator().manual_seed(12)) not in drawn
