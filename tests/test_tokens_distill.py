"""The token level of distill: the meta-gradient through fine-tuning steps of a tiny transformer against
finite differences (float64), through the bptt method's own outer-loss path; the head pool; readable sets."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fakes.tokens import T, TinyBertOptions, build_tiny_bert, token_embeddings  # noqa: E402

from distillctl.distillation.tokens import (  # noqa: E402
    TokenRows, TokenSpace, attention_loss, initial_attention, initial_rows, nearest_texts, nearest_tokens,
    readable_line,
)
from distillctl.methods import Learnables, MethodContext  # noqa: E402
from distillctl.recipe import InnerSettings, validate_plugin_section  # noqa: E402


def _bptt(total: int):
    from distillctl.plugins import get_registry

    section = validate_plugin_section("method", {"name": "bptt", "unroll": {"name": "full", "total": total}}, "t")
    return get_registry().build("method", section)


def _setup(total: int, *, attention: str, optimizer: str = "sgd", head_pool: int = 1, dtype=torch.float64,
           head_first: str = "none"):
    """A bptt method set up at the token level on a float64 tiny BERT, and its starting learnables."""
    opts = TinyBertOptions(dtype="float64" if dtype == torch.float64 else "float32")
    build = lambda: build_tiny_bert(8, 2, opts)  # noqa: E731
    data = token_embeddings()
    train = TokenRows(data.splits["train"].ids, data.splits["train"].mask)
    space = TokenSpace.build(build, init_seed=5, head_pool=head_pool, attention=attention, attention_weight=0.7,
                             dtype=dtype, head_first=head_first)
    gen = torch.Generator().manual_seed(0)
    x, mask, _ = initial_rows(space, train, data.splits["train"].y, 2, 2, gen)  # ipc 2: (4, T, 8)
    space = space.for_stage(mask)
    g = torch.Generator().manual_seed(1)
    tensors = {"x": x + 0.1 * torch.randn(x.shape, generator=g, dtype=dtype),
               "label_logits": torch.randn(4, 2, generator=g, dtype=dtype),
               "log_lr": torch.tensor(math.log(0.3), dtype=dtype)}
    if attention != "none":
        tensors["attention_logits"] = initial_attention(space, x, mask) + 0.3 * torch.randn(
            initial_attention(space, x, mask).shape, generator=g, dtype=dtype)
    learn = Learnables.from_dict(tensors).as_leaves()
    inner = InnerSettings(optimizer=optimizer, lr=0.3, momentum=0.5, learn_lr=True)
    method = _bptt(total)
    method.setup(MethodContext(
        build_student=build, student_name="tiny", num_classes=2, ipc=2,
        hard_labels=torch.arange(2).repeat_interleave(2), x_train=train, y_train=data.splits["train"].y,
        inner=inner, eval_budget=None, device=torch.device("cpu"), seed=0, soft_labels=True,
        level="tokens", tokens=space))
    real = TokenRows(data.splits["val"].ids, data.splits["val"].mask)
    return method, learn, real, data.splits["val"].y


# sgd with momentum (its state carried through the steps); Adam's first steps are ~lr*sign(g), too sharp
# for central differences to check
@pytest.mark.parametrize("total,attention,optimizer,head_first", [
    (1, "none", "sgd", "none"), (1, "all", "sgd", "none"), (2, "cls", "sgd", "none"), (3, "all", "sgd", "none"),
    (1, "none", "sgd", "sgd"), (2, "cls", "sgd", "sgd"), (1, "none", "sgd", "ridge"), (2, "all", "sgd", "ridge")])
def test_meta_gradient_matches_finite_differences(total, attention, optimizer, head_first):
    """d outer / d (x, label logits, log lr, attention logits) from bptt.step against central differences
    of bptt.step's own outer loss along random directions (float64, tiny BERT, `total` inner steps, with and
    without the head-only step first)."""
    method, learn, real, real_y = _setup(total, attention=attention, optimizer=optimizer, head_first=head_first)
    out = method.step(learn, real, real_y, torch.Generator().manual_seed(7))
    out.check(learn, "bptt")
    assert all(float(g.abs().sum()) > 0 for g in out.grads.values())  # every learnable reaches the outer loss

    def loss_at(shifted: dict) -> float:
        moved = Learnables.from_dict({k: shifted.get(k, v).detach() for k, v in learn.items()}).as_leaves()
        return method.step(moved, real, real_y, torch.Generator().manual_seed(7)).loss

    g = torch.Generator().manual_seed(3)
    eps = 1e-5
    for name, tensor in learn.items():
        v = torch.randn(tensor.shape, generator=g, dtype=tensor.dtype)
        fd = (loss_at({name: tensor + eps * v}) - loss_at({name: tensor - eps * v})) / (2 * eps)
        analytic = float((out.grads[name] * v).sum())
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9), name


def test_fine_tuning_step_moves_the_model_and_attention_loss_is_a_kl():
    """The inner loss's attention term is 0 when the targets are the model's own attention (KL(p||p)) and > 0
    otherwise; the outer loss changes with the set (the step is not a no-op)."""
    method, learn, real, real_y = _setup(1, attention="all")
    space = method.context.tokens
    x, mask = learn.x.detach(), space.mask
    _, attn = space.logits_and_attentions(space.initial(), x, mask)
    own = initial_attention(space, x, mask)
    from distillctl.distillation.tokens import attention_targets

    assert float(attention_loss(attn, attention_targets(own, mask), mask)) == pytest.approx(0, abs=1e-5)
    assert float(attention_loss(attn, attention_targets(own + torch.randn(own.shape, dtype=own.dtype), mask),
                                mask)) > 1e-3
    before = method.step(learn, real, real_y, torch.Generator().manual_seed(0)).loss
    moved = Learnables.from_dict({**learn.detached().as_dict(), "x": learn.x.detach() * 3}).as_leaves()
    assert method.step(moved, real, real_y, torch.Generator().manual_seed(0)).loss != pytest.approx(before)


def test_head_first_fits_the_head_alone_before_the_inner_steps():
    """With head_first the space knows the head (what a seed draws); the head-only step moves the head by
    -lr x its gradient and leaves the body as it was; the outer loss differs from the plain inner steps."""
    from torch.nn import functional as F

    from distillctl.distillation.tokens import head_first_step

    method, learn, real, real_y = _setup(1, attention="none", head_first="sgd")
    space = method.context.tokens
    assert sorted(space.head_names) == ["head.bias", "head.weight"]
    params = space.initial()
    x, targets, lr = learn.x.detach(), learn.targets(method.context.hard_labels, 2).detach(), torch.tensor(0.3)
    moved = head_first_step(space, params, x, space.mask, targets, lr, graph=False)
    p = {k: v.detach().requires_grad_(k in space.head_names) for k, v in params.items()}
    loss = F.cross_entropy(space.logits(p, x, space.mask), targets)
    grads = dict(zip(space.head_names, torch.autograd.grad(loss, [p[k] for k in space.head_names])))
    for k, v in params.items():
        expected = v - 0.3 * grads[k] if k in space.head_names else v
        assert torch.allclose(moved[k], expected, atol=1e-12), k
    plain, _, _, _ = _setup(1, attention="none")
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert method.step(learn, real, real_y, gen()).loss != pytest.approx(plain.step(learn, real, real_y, gen()).loss)


def test_ridge_head_first_is_the_closed_form_fit_and_forgets_the_starting_head():
    """head_first: ridge replaces the head by the ridge fit of the centred targets on the head's inputs (checked
    against the primal solution), and after it the model is the same from every starting head."""
    from distillctl.distillation.tokens import RIDGE, head_first_step, head_inputs

    method, learn, real, real_y = _setup(1, attention="none", head_first="ridge", head_pool=3)
    space = method.context.tokens
    x, targets = learn.x.detach(), learn.targets(method.context.hard_labels, 2).detach()
    lr = torch.tensor(0.3, dtype=x.dtype)
    fitted = [head_first_step(space, space.initial(seed), x, space.mask, targets, lr, graph=False)
              for seed in space.head_seeds]
    for other in fitted[1:]:
        for k in fitted[0]:
            assert torch.allclose(other[k], fitted[0][k], atol=1e-10), k
    feats = head_inputs(space.module, "head", lambda: space.logits(space.initial(), x, space.mask))  # (n, h)
    F1 = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], 1)
    lam = RIDGE * (F1 * F1).sum(1).mean()
    primal = torch.linalg.solve(F1.T @ F1 + lam * torch.eye(F1.shape[1], dtype=F1.dtype), F1.T @ (targets - 0.5))
    assert torch.allclose(fitted[0]["head.weight"], primal[:-1].T, atol=1e-8)
    assert torch.allclose(fitted[0]["head.bias"], primal[-1], atol=1e-8)
    losses = {round(method.step(learn, real, real_y, torch.Generator().manual_seed(s)).loss, 10) for s in range(6)}
    assert len(losses) == 1  # whichever pool head the generator picks, the outer loss is the same


def test_ridge_needs_a_linear_head():
    from distillctl.distillation.tokens import linear_head
    from distillctl.errors import UserError

    method, _, _, _ = _setup(1, attention="none", head_first="sgd")
    with pytest.raises(UserError, match="ridge needs a head that is one linear layer"):
        linear_head(method.context.tokens.module, ["head.weight"])


def test_head_pool_draws_other_heads_with_the_same_body():
    """A pool of head seeds: the pretrained body is shared, the heads differ, the initial model is the first."""
    method, learn, real, real_y = _setup(1, attention="none", head_pool=3)
    space = method.context.tokens
    assert space.head_seeds[0] == 5 and len(set(space.head_seeds)) == 3
    a, b = space.initial(space.head_seeds[0]), space.initial(space.head_seeds[1])
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert differ == ["head.bias", "head.weight"]
    losses = {method.step(learn, real, real_y, torch.Generator().manual_seed(s)).loss for s in range(6)}
    assert len(losses) > 1  # the generator picks different heads


def test_nearest_tokens_and_texts_read_a_set_back():
    """A set that IS real token embeddings reads back as those tokens (cosine 1), masked positions as -1, and
    its nearest real text is itself."""
    method, learn, real, _ = _setup(1, attention="none")
    space = method.context.tokens
    data = token_embeddings()
    ids, mask = data.splits["train"].ids[:3], data.splits["train"].mask[:3]
    x = space.embed(TokenRows(ids, mask))
    near, sims = nearest_tokens(x, mask, space.module.word_embeddings().detach(), k=2)
    assert near.shape == (3, T, 2)
    assert torch.equal(near[..., 0][mask.bool()], ids[mask.bool()])
    assert bool((near[~mask.bool()] == -1).all())
    assert float(sims[..., 0][mask.bool()].min()) == pytest.approx(1.0, abs=1e-6)
    feats = space.features(space.embed(TokenRows.of(data.splits["train"])), data.splits["train"].mask)
    idx, _ = nearest_texts(feats[:3], feats, k=1)
    assert idx[:, 0].tolist() == [0, 1, 2]
    assert readable_line([["un"], ["##der"], [], ["way"]]) == "under way"


def test_token_set_saves_and_loads_back(tmp_path):
    """A token-level set (x (n, T, d), mask, soft labels, attention labels) round-trips through its file, says
    its level, and a set whose mask does not match x is refused."""
    from distillctl.distillation.synthetic import SyntheticSet
    from distillctl.errors import UserError

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, T, 8, generator=g)
    mask = torch.ones(4, T)
    mask[0, -2:] = 0
    attn = torch.rand(4, 2, 2, 1, T, generator=g)
    attn = attn / attn.sum(-1, keepdim=True)
    syn = SyntheticSet(x=x, labels=torch.softmax(torch.randn(4, 2, generator=g), -1), ipc=2, num_classes=2,
                       inner_lr=0.05, meta={"init_seed": 5, "student_model": "tiny"}, mask=mask,
                       attention_labels=attn)
    path = syn.save(tmp_path / "ipc2.safetensors")
    back = SyntheticSet.load(path)
    assert back.level == "tokens" and back.dim == 8 and back.inner_lr == pytest.approx(0.05)
    assert torch.equal(back.x, x) and torch.equal(back.mask, mask) and torch.equal(back.attention_labels, attn)
    assert back.meta["init_seed"] == 5
    import json

    assert json.loads(path.with_suffix(".json").read_text())["level"] == "tokens"
    with pytest.raises(UserError, match="mask"):
        SyntheticSet(x=x, labels=torch.arange(2).repeat_interleave(2), ipc=2, num_classes=2, mask=mask[:, :3])
