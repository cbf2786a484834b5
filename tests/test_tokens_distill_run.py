"""distill end to end at the token level (a tiny BERT, a fake token cache): the files it writes, resume
giving the identical set, Boost-DD across token stages, and a method that does not serve the token level
refused with exit 2 before anything is written."""

from __future__ import annotations

import json
import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fakes import distill as distill_fakes  # noqa: E402
from fakes import tokens as tokens_fakes  # noqa: E402
from distillctl.distillation.synthetic import SyntheticSet  # noqa: E402
from distillctl.errors import UserError  # noqa: E402
from distillctl.plugins import load_registry, set_registry  # noqa: E402
from distillctl.recipe import validate_recipe  # noqa: E402
from distillctl.runs import read_jsonl  # noqa: E402
from distillctl.seeds import token_init_seed  # noqa: E402


class NoTestSplit:
    def __getattr__(self, name):
        raise AssertionError("distill touched the test split")


def recipe_data(**distill):
    base = distill_fakes.tiny_recipe({
        "ipc": [1, 2], "soft_labels": True,
        "method": {"name": "bptt", "unroll": {"name": "full", "total": 2}},
        "inner": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "learn_lr": True},
        "outer": {"lr": 0.01, "iterations": 6, "real_batch": 8, "val_every": 3, "ckpt_every": 2, "val_seeds": 2},
        "tokens": {"attention_labels": "cls", "attention_weight": 0.5},
    }, **distill)
    base["student"] = {"name": "tiny-bert"}
    base["embed"] = {"level": "tokens", "max_length": tokens_fakes.T}
    return base


@pytest.fixture
def env(monkeypatch, tmp_path):
    registry = load_registry(extra_plugins=[(distill_fakes, "tests", "0"), (tokens_fakes, "tests-tokens", "0")])
    set_registry(registry)  # reset after each test by conftest
    emb = tokens_fakes.token_embeddings()
    emb.splits["test"] = NoTestSplit()
    import distillctl.data.embed as embed_module

    monkeypatch.setattr(embed_module, "load_embeddings", lambda recipe, *, quiet=None: emb)
    monkeypatch.chdir(tmp_path)
    ns = types.SimpleNamespace(registry=registry, emb=emb, tmp=tmp_path)
    ns.recipe = lambda **kw: validate_recipe(recipe_data(**kw), registry=registry)
    return ns


def test_token_distill_writes_sets_with_masks_attention_labels_and_metadata(env):
    from distillctl.distillation.distill import distill

    res = distill(env.recipe(), run_dir=env.tmp / "run", quiet=True)
    assert [s["ipc"] for s in res.sets] == [1, 2]
    one, two = (SyntheticSet.load(s["path"]) for s in res.sets)
    for syn, ipc in ((one, 1), (two, 2)):
        assert syn.level == "tokens" and syn.x.shape == (2 * ipc, tokens_fakes.T, 8)
        assert syn.mask.shape == (2 * ipc, tokens_fakes.T) and syn.soft and syn.inner_lr > 0
        assert syn.attention_labels.shape == (2 * ipc, 2, 2, 1, tokens_fakes.T)  # (n, L, H, [CLS] row, T)
        torch.testing.assert_close(syn.attention_labels.sum(-1), torch.ones(2 * ipc, 2, 2, 1))
        assert bool((syn.attention_labels[syn.mask.bool().logical_not().view(2 * ipc, 1, 1, 1, -1)
                     .expand_as(syn.attention_labels)] == 0).all())  # no attention on padding
        assert syn.meta["init_seed"] == token_init_seed(3)  # the default: the recipe seed's own head stream
        assert syn.meta["inner_steps"] == 2 and syn.meta["student"] == "tiny-bert"
    # Boost-DD: the ipc-2 stage starts from the ipc-1 set, each class block's first row inherited (the same
    # values when the best set on val is the starting one, moved otherwise)
    inherited = two.x.view(2, 2, *two.x.shape[1:])[:, 0]
    assert torch.equal(inherited, one.x) == (two.meta["outer_step"] == 0)
    torch.testing.assert_close(two.mask.view(2, 2, -1)[:, 0], one.mask)
    metrics = read_jsonl(env.tmp / "run/metrics.jsonl")
    assert [(r["stage"], r["step"]) for r in metrics if "val_accuracy" in r] == [(0, 0), (0, 3), (0, 6), (1, 0),
                                                                               (1, 3), (1, 6)]
    assert all(r["grad_norm"] > 0 for r in metrics if "loss" in r)
    side = json.loads((env.tmp / "run/distilled/ipc2.json").read_text())
    assert side["level"] == "tokens" and side["seq_len"] == tokens_fakes.T


@pytest.mark.parametrize("die_at", [5, 9])  # stage 0 step 5 (after its step-4 checkpoint); stage 1 step 3
def test_token_resume_gives_the_identical_set(env, monkeypatch, die_at):
    from distillctl.distillation import tokens
    from distillctl.distillation.distill import distill

    full = distill(env.recipe(), run_dir=env.tmp / "a", quiet=True)
    real_step, calls = tokens.meta_step, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(tokens, "meta_step", dying)
    with pytest.raises(KeyboardInterrupt):
        distill(env.recipe(), run_dir=env.tmp / "b", quiet=True)
    monkeypatch.setattr(tokens, "meta_step", real_step)
    resumed = distill(env.recipe(), resume=env.tmp / "b", quiet=True)
    for a, b in zip(full.sets, resumed.sets):
        sa, sb = SyntheticSet.load(a["path"]), SyntheticSet.load(b["path"])
        for name in ("x", "labels", "mask", "attention_labels"):
            torch.testing.assert_close(getattr(sa, name), getattr(sb, name), rtol=0, atol=0)
        assert sa.inner_lr == sb.inner_lr and sa.meta["val_accuracy"] == sb.meta["val_accuracy"]


def test_head_pool_distills_and_records_its_heads(env):
    from distillctl.distillation.distill import distill

    res = distill(env.recipe(ipc=[1], tokens={"head_pool": 3, "attention_labels": "none"}),
                  run_dir=env.tmp / "p", quiet=True)
    syn = SyntheticSet.load(res.sets[0]["path"])
    assert len(set(syn.meta["head_seeds"])) == 3 and syn.meta["head_seeds"][0] == syn.meta["init_seed"]
    assert syn.attention_labels is None


@pytest.mark.parametrize("method", ["krr", "dm", "mtt"])
def test_a_method_without_the_token_level_exits_2_writing_nothing(env, cli, method):
    """krr/dm/mtt at embed.level tokens: one line naming the method and the methods that do (bptt), exit 2,
    no run directory."""
    with pytest.raises(UserError, match=rf"'{method}' works on vectors only.*methods that do: bptt"):
        env.recipe(method={"name": method})
    path = env.tmp / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe_data(method={"name": method})))
    r = cli("distill", path, "--run-dir", env.tmp / "never")
    assert r.code == 2 and "methods that do: bptt" in r.err and "Traceback" not in r.err
    assert not (env.tmp / "never").exists() and not (env.tmp / "runs").exists()


def test_several_students_at_the_token_level_exit_2_writing_nothing(env):
    """A token-level set is distilled for one fine-tuned model: `distill.students` with two is refused, naming
    the field and the students, before the run folder exists."""
    from distillctl.distillation.distill import distill

    recipe = env.recipe(students=[{"name": "tiny-bert"}, {"name": "tiny-bert"}])
    with pytest.raises(UserError, match=r"distill.students: .*token level.*2 students \(tiny-bert, tiny-bert\)"):
        distill(recipe, run_dir=env.tmp / "never")
    assert not (env.tmp / "never").exists() and not (env.tmp / "runs").exists()


def test_load_set_gives_what_fine_tunes_a_copy_to_the_validated_accuracy(env):
    """The README's recipe: load_set, initial_model(), `inner_steps` plain SGD steps at the set's inner lr on
    (x, mask, soft labels) -> the val accuracy distill recorded for the set (the same fine-tuning, done with
    torch.optim by hand)."""
    import distillctl
    from distillctl.distillation.distill import distill
    from torch.nn import functional as F

    res = distill(env.recipe(ipc=[1], tokens={"attention_labels": "none"}),
                  run_dir=env.tmp / "u", quiet=True)
    s = distillctl.load_set(res.run_dir)
    assert s.level == "tokens" and s.meta["inner_steps"] == 2
    model = s.initial_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=s.inner_lr)
    for _ in range(s.meta["inner_steps"]):
        loss = F.cross_entropy(model(s.x, s.mask), s.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = env.emb.splits["val"]
    with torch.no_grad():
        acc = float((model(model.embed_tokens(val.ids), val.mask).argmax(-1) == val.y).float().mean())
    assert acc == pytest.approx(s.meta["val_accuracy"]) and acc != 0.5  # 12 val rows: not the chance score


def test_export_and_readout_of_a_token_set(env, monkeypatch):
    """export jsonl/csv of a token-level set: x is the (T, d) sequence flattened, the mask, the nearest token per
    position (a set left at its real starting texts reads back as those texts' token ids, cosine 1) and
    the nearest real texts (the starting text itself first), the real texts run through the model 3 at a time."""
    import csv

    from distillctl.reporting import readable

    monkeypatch.setattr(readable, "READOUT_CHUNK", 3)

    from distillctl.distillation.distill import distill
    from distillctl.reporting.export import export
    from distillctl.reporting.readable import token_readout

    # lr 0: the set never moves from its starting real texts (validation picks the step-0 set anyway)
    res = distill(env.recipe(ipc=[1], tokens={"attention_labels": "none"}, outer={"lr": 1e-12, "iterations": 2}),
                  run_dir=env.tmp / "e", quiet=True)
    s = SyntheticSet.load(res.sets[0]["path"])
    (read,) = token_readout([res.sets[0]["path"]], env.emb)
    train = env.emb.splits["train"]
    assert read["real_rows_searched"] == min(len(train.y), readable.MAX_REAL) > 3 and read["real_seconds"] > 0
    texts = env.emb.texts("train")
    for q in read["sequences"]:
        row = q["neighbours"][0]["train_row"]
        assert q["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        attended = train.mask[row].bool()
        assert [int(t[0]) for t in q["tokens"] if t] == train.ids[row][attended].tolist()
        assert q["neighbours"][0]["text"] == texts[row]
        assert min(c[0] for c in q["cosines"] if c) == pytest.approx(1.0, abs=1e-3)
    out = export(res.run_dir, "jsonl", embeddings=env.emb, quiet=True)
    rows = [json.loads(line) for line in out.path.read_text().splitlines()]
    meta = json.loads(out.metadata_path.read_text())
    assert meta["level"] == "tokens" and meta["x_width"] == tokens_fakes.T * 8 and meta["seq_len"] == tokens_fakes.T
    for r, q in zip(rows, read["sequences"]):
        assert torch.equal(torch.tensor(r["x"]).view(tokens_fakes.T, 8), s.x[r["row"]])
        assert r["mask"] == s.mask[r["row"]].tolist() and r["reads_as"] == q["text"]
        assert r["nearest_tokens"] == ["/".join(t) for t in q["tokens"]]
        assert r["nearest_texts"][0] == q["neighbours"][0]["text"]
    out = export(res.run_dir, "csv", embeddings=env.emb, quiet=True)
    with out.path.open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and float(table[1][f"x_{tokens_fakes.T * 8 - 1}"]) == pytest.approx(float(s.x[1, -1, -1]))
    assert table[0]["reads_as"] == rows[0]["reads_as"] and table[0]["tokens_0"] == rows[0]["nearest_tokens"][0]


def test_report_shows_the_sequences_readable(env):
    """eval (token arms) then report on a token-level run: report.md has the readable-sequences part (each
    sequence, what it reads as, its nearest real texts) after what the terminal shows, report.json the readout."""
    from distillctl.distillation.distill import distill
    from distillctl.evaluation.evaluate import evaluate
    from distillctl.reporting.report import SEQUENCES_HEADING, report, report_tables

    emb = tokens_fakes.token_embeddings()  # with its test split: eval scores on it
    res = distill(env.recipe(ipc=[1], tokens={"attention_labels": "none"}), run_dir=env.tmp / "rep", quiet=True,
                  embeddings=emb)
    evaluate(res.run_dir, seeds=2, quiet=True, embeddings=emb)
    md = report(res.run_dir, quiet=True, embeddings=emb)
    text = md.read_text()
    assert SEQUENCES_HEADING in text and SEQUENCES_HEADING not in report_tables(md)
    assert "**sequence 0** (class `class0`" in text and "**sequence 1** (class `class1`" in text
    assert "| 1 | " in text.split(SEQUENCES_HEADING)[1]  # a nearest real text row
    out = json.loads((res.run_dir / "report.json").read_text())
    (read,) = out["readout"]
    assert read["ipc"] == 1 and len(read["sequences"]) == 2 and read["sequences"][0]["neighbours"]
