"""How the bundled AG News sample was made (reproducible; not needed at run time).

    python make_sample.py /path/to/shared/data/agnews

Picks, per class and with a fixed seed, 600 lines of the 12,000-row TAB train subset and 300 lines of
the original test.csv, and copies them byte for byte in their original order.
"""

import csv
import random
import sys
from pathlib import Path

TRAIN_PER_CLASS, TEST_PER_CLASS, SEED = 600, 300, 0


def pick(lines, label_of, per_class, seed):
    by_class = {}
    for i, line in enumerate(lines):
        by_class.setdefault(label_of(line), []).append(i)
    rng = random.Random(seed)
    keep = sorted(i for c in sorted(by_class) for i in rng.sample(by_class[c], per_class))
    return [lines[i] for i in keep]


def main(src: Path, dst: Path) -> None:
    train = (src / "train_subset_12k" / "ag_news_train.txt").read_bytes().decode("utf-8").splitlines(keepends=True)
    test = (src / "test.csv").read_bytes().decode("utf-8").splitlines(keepends=True)
    train_s = pick(train, lambda ln: ln.split("\t", 1)[0], TRAIN_PER_CLASS, SEED)
    test_s = pick(test, lambda ln: next(csv.reader([ln]))[0], TEST_PER_CLASS, SEED)
    (dst / "train.txt").write_bytes("".join(train_s).encode("utf-8"))
    (dst / "test.csv").write_bytes("".join(test_s).encode("utf-8"))
    for name in ("classes.txt", "readme.txt"):
        (dst / name).write_bytes((src / name).read_bytes())
    print(f"train.txt: {len(train_s)} rows, test.csv: {len(test_s)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
