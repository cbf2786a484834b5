"""Built-in students: options, shapes, a reference for attention, functional/vmap use, double backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillctl.errors import UserError
from distillctl.plugins import get_registry


def build(name, d=12, C=3, **options):
    info = get_registry().get("student", name)
    return info.factory(d, C, info.parse_options(options))


def test_students_are_registered_with_documented_options():
    reg = get_registry()
    for name in ("linear", "mlp", "transformer"):
        info = reg.get("student", name)
        assert info.package == "distillctl" and info.description
        assert all(f.description for f in info.options.model_fields.values())


def test_mlp_layers_follow_options():
    m = build("mlp", hidden=[7, 5], activation="gelu", dropout=0.2)
    linears = [l for l in m if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(12, 7), (7, 5), (5, 3)]
    assert sum(isinstance(l, nn.GELU) for l in m) == 2 and sum(isinstance(l, nn.Dropout) for l in m) == 2
    assert not any(isinstance(l, nn.Dropout) for l in build("mlp", hidden=4))  # int shorthand, no dropout
    assert len(list(build("mlp", hidden=[]).parameters())) == 2  # a linear model
    assert m(torch.randn(5, 12)).shape == (5, 3)


def test_linear_is_softmax_regression_with_identity_features():
    m = build("linear")
    x = torch.randn(5, 12)
    torch.testing.assert_close(m(x), x @ m.weight.T + m.bias)
    assert m.weight.shape == (3, 12) and torch.equal(m.features(x), x)
    # the contract of features: the last layer applied to them gives the logits
    torch.testing.assert_close(nn.functional.linear(m.features(x), m.weight, m.bias), m(x))
    no_bias = build("linear", bias=False)
    assert [n for n, _ in no_bias.named_parameters()] == ["weight"] and list(no_bias.buffers()) == []
    assert type(build("linear")) is type(m)  # one class: students of a population can be stacked
    with pytest.raises(Exception):
        get_registry().get("student", "linear").parse_options({"hidden": [4]})


def test_linear_student_reaches_the_logistic_regression_optimum():
    """Trained long enough with a full batch, the vmapped linear student is sklearn's unregularised
    multinomial logistic regression on separable-ish data: the same test predictions."""
    from sklearn.linear_model import LogisticRegression

    from distillctl.evaluation.training import TrainBudget, student_builder, train_and_score
    from distillctl.recipe import validate_recipe

    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 4, generator=g, dtype=torch.float64)
    y = (X[:, 0] - X[:, 1] + 0.7 * torch.randn(120, generator=g, dtype=torch.float64) > 0).long()
    recipe = validate_recipe({"name": "x", "dataset": {"name": "agnews", "source": "sample"},
                              "student": {"name": "linear"}})
    Xt = torch.randn(200, 4, generator=g, dtype=torch.float64)
    scores = train_and_score(student_builder(recipe, 4, 2), X, y, Xt, torch.zeros(200, dtype=torch.long), seeds=[0],
                             budget=TrainBudget(steps=300, lr=0.3, batch_size=512), num_classes=2,
                             return_params=True)
    ref = LogisticRegression(C=1e6, max_iter=10000, tol=1e-10).fit(X.numpy(), y.numpy())
    W, b = scores.params["weight"][0], scores.params["bias"][0]  # (2, 4), (2,): logits; ref has one row
    torch.testing.assert_close(W[1] - W[0], torch.tensor(ref.coef_[0]), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(b[1] - b[0], torch.tensor(ref.intercept_[0]), rtol=2e-2, atol=2e-2)


def test_transformer_options_are_validated():
    info = get_registry().get("student", "transformer")
    with pytest.raises(Exception, match="heads .3. must divide d_model .8."):
        info.parse_options({"d_model": 8, "heads": 3})
    with pytest.raises(Exception):
        info.parse_options({"layers": 0})


@pytest.mark.parametrize("d", [12, 13])  # 13: the last token is zero-padded
def test_transformer_shapes_and_no_buffers(d):
    m = build("transformer", d=d, n_tokens=4, d_model=8, layers=2, heads=2, ff=16)
    assert m(torch.randn(6, d)).shape == (6, 3)
    assert list(m.buffers()) == []
    assert m.proj.in_features == -(-d // 4)


def test_zero_init_residual_makes_every_block_the_identity_at_init():
    """With zero_init_residual a fresh student equals the same student with its blocks removed; after one
    gradient step the blocks are no longer the identity (they still learn)."""
    def without_blocks(model, x):  # (5, 16) -> (5, C): the same student with its blocks left out
        return model.head(model.ln(model.proj(x.view(5, 4, 4)) + model.pos).mean(dim=1))

    torch.manual_seed(0)
    m = build("transformer", d=16, n_tokens=4, d_model=8, heads=2, ff=12, layers=2, zero_init_residual=True)
    x = torch.randn(5, 16)
    torch.testing.assert_close(m(x), without_blocks(m, x))
    torch.manual_seed(0)  # the default initialisation is not the identity
    default = build("transformer", d=16, n_tokens=4, d_model=8, heads=2, ff=12, layers=2)
    assert not torch.allclose(default(x), without_blocks(default, x))
    m(x).logsumexp(-1).sum().backward()
    assert m.blocks[0].ff[2].weight.grad.abs().sum() > 0 and m.blocks[0].attn.out.weight.grad.abs().sum() > 0


def test_attention_matches_torch_multihead_attention():
    from distillctl_plugins.students.models import SelfAttention

    torch.manual_seed(0)
    ours = SelfAttention(8, heads=2, dropout=0.0)
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    h = torch.randn(3, 5, 8)
    torch.testing.assert_close(ours(h), ref(h, h, h, need_weights=False)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,opts", [("linear", {}), ("mlp", {"hidden": [6]}),
                                       ("transformer", {"n_tokens": 3, "d_model": 4, "heads": 2, "ff": 8})])
def test_vmapped_functional_call_and_double_backward(name, opts):
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    models = [build(name, **opts).double() for _ in range(3)]
    params, buffers = stack_module_state(models)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    out = vmap(lambda p, b, x: functional_call(models[0], (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, x)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(x))
    # the meta-gradient differentiates through the students' own gradients
    (g,) = torch.autograd.grad(out.logsumexp(-1).sum(), [params[next(iter(params))]], create_graph=True)
    (gx,) = torch.autograd.grad(g.pow(2).sum(), x)
    # the same second-order gradient student by student, without vmap
    first = next(iter(params))
    ref = torch.zeros_like(x)
    for m in models:
        (gk,) = torch.autograd.grad(m(x).logsumexp(-1).sum(), [dict(m.named_parameters())[first]], create_graph=True)
        ref += torch.autograd.grad(gk.pow(2).sum(), x)[0]
    assert gx.abs().sum() > 0
    torch.testing.assert_close(gx, ref, rtol=1e-10, atol=1e-12)


def test_unknown_student_lists_known_ones():
    with pytest.raises(UserError, match="unknown student plugin 'cnn'; known: ") as info:
        get_registry().get("student", "cnn")
    assert "mlp (distillctl)" in str(info.value) and "transformer (distillctl)" in str(info.value)
