"""Dataset plugins and the shared text-data helpers: every real file format, duplicates, bad rows,
labels, the stratified validation carve, and the real files in ../shared/data when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distillctl.errors import UserError
from distillctl.textdata import TextSplit, carve_val, dedupe_key, merge_parts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def registry():
    from distillctl.plugins import get_registry

    return get_registry()


def source(name, tmp_path=None, **options):
    """Build a dataset source the way a recipe does (options validated, paths resolved)."""
    info = registry().get("dataset", name)
    opts = info.options.model_validate(options, context={"base_dir": str(tmp_path) if tmp_path else None})
    return info.factory(opts)


# -- AG News: the three real formats ------------------------------------------------------------------

AG_CSV = (
    '"3","Wall St. Bears Claw Back (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling\\band of '
    'ultra-cynics, are seeing green again."\n'
    '"4","Race Is On (SPACE.com)","SPACE.com - A second\\team competing for the  #36;10 million prize, it '
    '#39;s said  quot;soon quot;."\n'
    '"2","Phelps Wins?","Michael Phelps won &lt;b&gt;gold&lt;/b&gt; again; fans said ""wow""."\n'
    '"1","Vote Early","Venezuelans turned out early."\n'
)
AG_TAB = (
    "1\tVote Early (Reuters)Reuters - Venezuelans turned out early\\and in large numbers.\n"
    '3\t"Oil Up ""Again""Prices rose on Monday."\n'
    "2\tPhelps AgainMichael Phelps won another medal.\n"
    "4\tChips ShrinkIntel showed a smaller transistor \\$ cheaper.\n"
)
AG_NOISY = (
    "label,gt,text,group\n"
    '2,0,"Vote Early (Reuters) . Reuters - Venezuelans turned out early and in large numbers.",5\n'
    '3,1,"Phelps Again . Michael Phelps won another medal.",1\n'
    '0,3,"Chips Shrink . Intel showed a smaller transistor \\$ cheaper.",2\n'
)


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_agnews_original_csv_is_parsed_and_cleaned(tmp_path):
    f = write(tmp_path / "test.csv", AG_CSV)
    s = source("agnews", train=str(f), test=str(f), dedupe=False).load()
    test = s.splits["test"]
    assert test.labels.tolist() == [2, 3, 1, 0]  # class 1-4 -> 0-3
    assert s.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert test.texts[0] == ("Wall St. Bears Claw Back (Reuters). Reuters - Short-sellers, Wall Street's dwindling "
                             "band of ultra-cynics, are seeing green again.")
    assert test.texts[1] == ('Race Is On (SPACE.com). SPACE.com - A second team competing for the $10 million '
                             'prize, it\'s said "soon".')
    # a title ending in "?" gets a space only; entities and tags repaired
    assert test.texts[2] == 'Phelps Wins? Michael Phelps won gold again; fans said "wow".'


def test_agnews_clean_false_keeps_the_raw_text(tmp_path):
    f = write(tmp_path / "test.csv", AG_CSV)
    s = source("agnews", train=str(f), test=str(f), clean=False, join=" -- ", dedupe=False).load()
    assert s.splits["test"].texts[1].startswith("Race Is On (SPACE.com) -- SPACE.com - A second\\team")
    assert "#36;" in s.splits["test"].texts[1]


def test_agnews_fields_option(tmp_path):
    f = write(tmp_path / "test.csv", AG_CSV)
    s = source("agnews", train=str(f), test=str(f), fields="title", dedupe=False).load()
    assert s.splits["train"].texts[3] == "Vote Early"
    t = write(tmp_path / "t.txt", AG_TAB)
    with pytest.raises(UserError, match="only fields: title\\+description"):
        source("agnews", train=str(t), test=str(f), fields="title").load()


def test_agnews_tab_and_noisyag_formats(tmp_path):
    tab = write(tmp_path / "ag_news_train.txt", AG_TAB)
    noisy = write(tmp_path / "samples10000valMed.csv", AG_NOISY)
    test = write(tmp_path / "test.csv", AG_CSV)
    s = source("agnews", train=[str(tab)], test=str(test), dedupe=False).load()
    tr = s.splits["train"]
    assert tr.labels.tolist() == [0, 2, 1, 3]
    assert tr.texts[0] == "Vote Early (Reuters)Reuters - Venezuelans turned out early and in large numbers."
    assert tr.texts[1] == 'Oil Up "Again"Prices rose on Monday.'  # CSV-quoted TAB field unquoted
    s = source("agnews", train=[str(noisy)], test=str(noisy), dedupe=False).load()  # its 3 classes in both
    tr = s.splits["train"]
    assert tr.labels.tolist() == [0, 1, 3]  # the gold `gt`, never the noisy `label`
    # " . " between title and description becomes the same join as the original CSV
    assert tr.texts[0] == "Vote Early (Reuters). Reuters - Venezuelans turned out early and in large numbers."
    assert tr.texts[2] == "Chips Shrink. Intel showed a smaller transistor $ cheaper."


def test_agnews_label_outside_the_set(tmp_path):
    f = write(tmp_path / "test.csv", AG_CSV + '"5","Title","Text."\n')
    with pytest.raises(UserError, match=r"label '5' \(class index 4\) at row 5 is outside the label set 0..3 "
                                        r"\(World, Sports, Business, Sci/Tech\)"):
        source("agnews", train=str(f), test=str(f)).load()


def test_agnews_format_detection_fails_clearly(tmp_path):
    bad = write(tmp_path / "x.csv", "hello,world\n")
    with pytest.raises(UserError, match="cannot tell the AG News format .*set format: csv \\| tab \\| noisyag"):
        source("agnews", train=str(bad), test=str(bad)).load()


def test_multi_file_split_removes_duplicates_and_reports_the_count(tmp_path):
    tab = write(tmp_path / "ag_news_train.txt", AG_TAB)
    noisy = write(tmp_path / "noisy.csv", AG_NOISY)
    test = write(tmp_path / "test.csv", AG_CSV)
    s = source("agnews", train=[str(tab), str(noisy)], test=str(test)).load()
    tr = s.splits["train"]
    # 7 rows in: "Vote Early", "Phelps Again" and "Chips Shrink" occur in both files (same label) -> 3 removed;
    # "Vote Early" then also occurs in test ("Vote Early. Venezuelans turned out early." is different text),
    # so nothing more goes.
    assert len(tr) == 4
    assert any("3 exact duplicate rows removed (7 rows from 2 files -> 4)" in n for n in s.notes)
    assert sorted(tr.labels.tolist()) == [0, 1, 2, 3]


def test_training_rows_that_occur_in_test_are_removed(tmp_path):
    test = write(tmp_path / "test.csv", AG_CSV)
    # the same article as test row 4, distributed TAB-style (title glued to description)
    tab = write(tmp_path / "train.txt", "1\tVote EarlyVenezuelans turned out early.\n2\tOther news.\n"
                "1\tWorld news.\n3\tMarket news.\n4\tTech news.\n")
    s = source("agnews", train=str(tab), test=str(test)).load()
    assert s.splits["train"].texts == ["Other news.", "World news.", "Market news.", "Tech news."]
    assert any("1 rows whose text also occurs in the test split removed" in n for n in s.notes)
    assert len(s.splits["test"]) == 4  # test is never changed


def test_dedupe_key_ignores_case_spacing_punctuation_only():
    assert dedupe_key("Vote Early (Reuters). Reuters - Hi") == dedupe_key("vote early (reuters)Reuters -  hi")
    assert dedupe_key("Vote Early") != dedupe_key("Vote Earlier")
    assert dedupe_key("a", "b") != dedupe_key("ab", "")


def test_merge_parts_keeps_same_text_with_other_label_and_says_so():
    notes = []
    a = TextSplit(["x", "y"], None, np.array([0, 1]))
    b = TextSplit(["X!", "y"], None, np.array([1, 1]))
    out = merge_parts([a, b], where="t", notes=notes)
    assert out.texts == ["x", "y", "X!"]
    assert "1 exact duplicate rows removed" in notes[0] and "different label" in notes[1]


def test_agnews_bundled_sample_is_balanced():
    s = source("agnews", source="sample").load()
    assert s.splits["test"].class_counts(4) == [300, 300, 300, 300]
    counts = s.splits["train"].class_counts(4)
    assert sum(counts) > 2300 and min(counts) >= 580 and max(counts) <= 600
    assert "val" not in s.splits  # carved by the embed stage
    from distillctl_plugins.datasets.agnews import sample_dir

    assert "Character-level Convolutional Networks" in (sample_dir() / "SOURCE.md").read_text()


def test_agnews_options_are_validated(tmp_path):
    with pytest.raises(Exception, match="source: files needs train and test"):
        source("agnews")
    with pytest.raises(Exception, match="remove them with source: sample"):
        source("agnews", source="sample", train="x.csv")


def test_missing_file_is_one_line_naming_the_field(tmp_path):
    with pytest.raises(UserError, match=r"dataset.train: file not found: .*nope.txt"):
        source("agnews", train=str(tmp_path / "nope.txt"), test=str(tmp_path / "nope.csv")).identity()


@pytest.mark.skipif(not (SHARED / "agnews" / "test.csv").exists(), reason="../shared/data/agnews not present")
@pytest.mark.slow
def test_real_agnews_files():
    d = SHARED / "agnews"
    s = source("agnews", train=[str(d / "train_subset_12k" / "ag_news_train.txt"),
                                str(d / "train_subset_noisyag_10k" / "samples10000valMed.csv")],
               test=str(d / "test.csv"), dedupe=False).load()
    assert len(s.splits["test"]) == 7600
    assert s.splits["test"].class_counts(4) == [1900] * 4
    assert len(s.splits["train"]) == 22000
    # 12k subset: 3,000 per class; NoisyAG gold labels 2514/2504/2519/2463
    assert s.splits["train"].class_counts(4) == [3000 + 2514, 3000 + 2504, 3000 + 2519, 3000 + 2463]
    assert not any("\\" in t or " #39;" in t or " quot;" in t for t in s.splits["test"].texts)
    deduped = source("agnews", train=[str(d / "train_subset_12k" / "ag_news_train.txt"),
                                      str(d / "train_subset_noisyag_10k" / "samples10000valMed.csv")],
                     test=str(d / "test.csv")).load()
    # SOURCE.md: 2,379 NoisyAG texts also occur in the 12k subset; the union is ~19.6k articles
    assert 19400 < len(deduped.splits["train"]) < 19700


# -- MRPC ------------------------------------------------------------------------------------------

MRPC_HEAD = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_TRAIN = MRPC_HEAD + (
    '1\t702876\t702977\tAmrozi called him "the witness.\tReferring to him as "the witness", Amrozi spoke.\n'
    "0\t2108705\t2108831\tYucaipa owned Dominick's.\tYucaipa bought Dominick's in 1995.\n"
    '1\t1330381\t1330521\tHe said "no.\tHe said no.\n'
    "0\t3344667\t3344648\tShares fell.\tShares rose.\n"
)
MRPC_TEST = MRPC_HEAD + "1\t1089874\t1089925\tPCCW's officer \"will report.\tThe officer will report.\n"


def test_mrpc_files_with_bom_and_unbalanced_quotes(tmp_path):
    train = write(tmp_path / "train.tsv", MRPC_TRAIN, bom=True)
    dev = write(tmp_path / "dev.tsv", MRPC_HEAD + "1\t1\t2\tA \"b.\tA b.\n", bom=True)
    test = write(tmp_path / "msr_paraphrase_test.txt", MRPC_TEST, bom=True)
    s = source("mrpc", dir=str(tmp_path)).load()
    tr = s.splits["train"]
    assert len(tr) == 4 and tr.labels.tolist() == [1, 0, 1, 0]  # quotes did not merge rows
    assert tr.texts[0] == 'Amrozi called him "the witness.' and tr.pairs[2] == "He said no."
    assert len(s.splits["val"]) == 1 and len(s.splits["test"]) == 1
    assert s.splits["test"].texts[0] == 'PCCW\'s officer "will report.'
    assert s.label_names == ["not_equivalent", "equivalent"]
    val = s.splits["val"]  # the dev file: its unbalanced quote is text, not the start of a quoted field
    assert (val.texts, val.pairs, val.labels.tolist()) == (['A "b.'], ["A b."], [1])
    assert {train.name, dev.name, test.name} == {"train.tsv", "dev.tsv", "msr_paraphrase_test.txt"}


def test_mrpc_dev_ids_rebuild_the_glue_split(tmp_path):
    write(tmp_path / "msr_paraphrase_train.txt", MRPC_TRAIN, bom=True)
    write(tmp_path / "msr_paraphrase_test.txt", MRPC_TEST, bom=True)
    write(tmp_path / "dev_ids.tsv", "#1 ID\t#2 ID\n2108705\t2108831\n1330381\t1330521\n")
    s = source("mrpc", dir=str(tmp_path)).load()
    assert s.splits["val"].texts == ["Yucaipa owned Dominick's.", 'He said "no.']
    assert len(s.splits["train"]) == 2


def test_mrpc_glue_test_tsv_has_no_labels(tmp_path):
    write(tmp_path / "train.tsv", MRPC_TRAIN, bom=True)
    test = write(tmp_path / "test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\ta\tb\n", bom=True)
    with pytest.raises(UserError, match="has no labels .*msr_paraphrase_test.txt"):
        source("mrpc", train=str(tmp_path / "train.tsv"), test=str(test)).load()


def test_mrpc_label_outside_the_set(tmp_path):
    write(tmp_path / "train.tsv", MRPC_TRAIN.replace("0\t3344667", "2\t3344667"), bom=True)
    write(tmp_path / "msr_paraphrase_test.txt", MRPC_TEST, bom=True)
    with pytest.raises(UserError, match="Quality '2' is outside the label set 0, 1"):
        source("mrpc", dir=str(tmp_path)).load()


@pytest.mark.skipif(not (SHARED / "mrpc" / "train.tsv").exists(), reason="../shared/data/mrpc not present")
@pytest.mark.slow
def test_real_mrpc_files():
    s = source("mrpc", dir=str(SHARED / "mrpc")).load()
    sizes = {k: (len(v), v.class_counts(2)) for k, v in s.splits.items()}
    assert sizes == {"train": (3668, [1194, 2474]), "val": (408, [129, 279]), "test": (1725, [578, 1147])}
    tok = source("mrpc", dir=str(SHARED / "mrpc" / "senteval_tokenized")).load()  # via dev_ids.tsv
    assert {k: len(v) for k, v in tok.splits.items()} == {"train": 3668, "val": 408, "test": 1725}
    assert tok.splits["val"].labels.tolist() == s.splits["val"].labels.tolist()


# -- local -----------------------------------------------------------------------------------------

ROWS = [("good movie", "pos"), ("bad movie", "neg"), ("great film", "pos"), ("awful film", "neg"),
        ("fine plot", "pos"), ("poor plot", "neg")]


def test_local_formats_and_column_mapping(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"sentence": [r[0] for r in ROWS], "y": [r[1] for r in ROWS], "extra": range(6)})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "d.parquet")
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        f = str(tmp_path / f"d.{ext}")
        s = source("local", train=f, test=f, text="sentence", label="y", dedupe=False).load()
        assert s.label_names == ["neg", "pos"]  # sorted names from the data
        assert s.splits["train"].texts == [r[0] for r in ROWS]
        assert s.splits["train"].labels.tolist() == [1, 0, 1, 0, 1, 0]


def test_local_unknown_column_lists_the_available_ones(tmp_path):
    f = write(tmp_path / "d.csv", "sentence,y\nhello,1\n")
    with pytest.raises(UserError, match=r"dataset.text: column 'text' not in .*d.csv \(columns: sentence, y\)"):
        source("local", train=str(f), test=str(f), label="y").load()


def test_local_label_names_and_labels_outside_the_set(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\na,1\nb,2\nc,3\n")
    s = source("local", train=str(f), test=str(f), label_names=["x", "y", "z"], label_offset=1, dedupe=False).load()
    assert s.splits["train"].labels.tolist() == [0, 1, 2]
    with pytest.raises(UserError, match=r"label '3' at row 3 is outside the label set 0..2 \(x, y, z\)"):
        source("local", train=str(f), test=str(f), label_names=["x", "y", "z"]).load()
    g = write(tmp_path / "g.csv", "text,label\na,cat\nb,dog\n")
    with pytest.raises(UserError, match=r"label 'dog' at row 2 is not in the label set \(cat\)"):
        source("local", train=str(g), test=str(g), label_names=["cat"]).load()


def test_local_bad_rows_skip_or_fail(tmp_path):
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in [
        {"text": "ok one", "label": 0}, {"text": "", "label": 1}, {"text": 5, "label": 1},
        {"text": "ok two", "label": None}, {"text": "ok three", "label": 1}]) + "\n")
    s = source("local", train=str(f), test=str(f), dedupe=False)
    data = s.load(bad_rows="skip")
    assert data.splits["test"].texts == ["ok one", "ok three"]
    assert any("3 of 5 rows have an empty or non-text field or no label (first at row 2); skipped" in n
               for n in data.notes)
    with pytest.raises(UserError, match="3 of 5 rows .* set embed.bad_rows=skip"):
        s.load(bad_rows="fail")


def test_local_tsv_with_unbalanced_quotes_needs_quoting_none(tmp_path):
    f = write(tmp_path / "d.tsv", 'text\tlabel\nHe said "hi.\t1\nShe left.\t0\n')
    s = source("local", train=str(f), test=str(f), quoting="none", dedupe=False).load()
    assert s.splits["train"].texts == ['He said "hi.', "She left."]


def test_local_unknown_extension(tmp_path):
    with pytest.raises(UserError, match="cannot tell the format .*set format"):
        source("local", train=str(tmp_path / "d.xyz"), test=str(tmp_path / "d.xyz"))


# -- hf --------------------------------------------------------------------------------------------

def test_hf_loads_a_saved_dataset_with_classlabel_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    dsd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["a b", "c d", "e f", "a b"], "label": [0, 1, 1, 0]},
                                            features=feats),
        "test": datasets.Dataset.from_dict({"sentence": ["g h", "i j"], "label": [1, 0]}, features=feats)})
    dsd.save_to_disk(str(tmp_path / "ds"))
    s = source("hf", path=str(tmp_path / "ds"), text="sentence")
    ident = s.identity()
    assert set(ident["fingerprints"]) == {"train", "test"}
    data = s.load()
    assert data.label_names == ["neg", "pos"]
    assert data.splits["train"].texts == ["a b", "c d", "e f"]  # the duplicate "a b" removed
    with pytest.raises(UserError, match=r"column 'text' not in .* \(columns: sentence, label\)"):
        source("hf", path=str(tmp_path / "ds")).load()


def test_hf_unreachable_hub_points_to_local(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(UserError, match="hub is unreachable .*use `dataset: \\{name: local"):
        source("hf", path="distillctl-test/no-such-dataset").load()


# -- the validation carve ----------------------------------------------------------------------------

def test_carve_val_is_stratified_seeded_and_exact():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    tr, va = carve_val(y, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 90
    assert np.bincount(y[va]).tolist() == [5, 3, 2]
    assert set(tr).isdisjoint(va) and sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
    tr2, va2 = carve_val(y, 0.1, seed=3)
    assert va.tolist() == va2.tolist()
    _, va3 = carve_val(y, 0.1, seed=4)
    assert va.tolist() != va3.tolist()
    _, va4 = carve_val(y, 7, seed=0)  # a count
    assert len(va4) == 7 and np.bincount(y[va4], minlength=3).tolist() == [4, 2, 1]


def test_carve_val_keeps_a_training_row_per_class_and_rejects_bad_sizes():
    y = np.array([0, 0, 0, 0, 1, 1])
    tr, va = carve_val(y, 0.5, seed=0)
    assert set(y[tr].tolist()) == {0, 1}
    with pytest.raises(UserError, match="6 validation rows asked for but train has only 6"):
        carve_val(y, 6, seed=0)
    with pytest.raises(UserError, match="less than one row"):
        carve_val(y, 0.01, seed=0)


def test_validation_rows_that_occur_in_train_are_removed(tmp_path):
    test = write(tmp_path / "test.csv", AG_CSV)
    train = write(tmp_path / "train.txt", "1\tOther news.\n2\tSport news.\n3\tMarket news.\n4\tTech news.\n")
    # the same article as a training row (another file layout, other spacing): it must not be scored as val
    val = write(tmp_path / "val.txt", "1\tOther  news\n3\tBusiness news.\n")
    s = source("agnews", train=str(train), val=str(val), test=str(test)).load()
    assert s.splits["val"].texts == ["Business news."]
    assert s.splits["train"].texts == ["Other news.", "Sport news.", "Market news.", "Tech news."]  # not changed by val
    assert any(n.endswith("val: 1 rows whose text also occurs in the train split removed") for n in s.notes), s.notes
