import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from chargpt.config import PRESETS, build_config
from chargpt.model import GPT
from chargpt.model_config import GPTConfig, model_args


def small_model(**overrides) -> GPT:
    args = dict(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    args.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args)).eval()


def test_forward_shapes_and_loss():
    model = small_model()
    idx = torch.randint(11, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 11)
    assert loss.shape == ()
    # An untrained model is close to uniform over the vocabulary.
    assert abs(loss.item() - math.log(11)) < 0.5
    logits, loss = model(idx[:, :5])
    assert logits.shape == (3, 5, 11) and loss is None


def test_rejects_sequences_longer_than_the_context():
    with pytest.raises(ValueError, match="block_size"):
        small_model()(torch.zeros(1, 17, dtype=torch.long))


def test_attention_is_causal():
    model = small_model()
    idx = torch.randint(11, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 11
    before, _ = model(idx)
    after, _ = model(changed)
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-6)
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_fused_attention_matches_per_head_attention():
    model = small_model()
    attention = model.blocks[0].attn
    x = torch.randn(2, 10, 32)
    q, k, v = attention.qkv(x).split(32, dim=2)
    heads = []
    mask = torch.tril(torch.ones(10, 10, dtype=torch.bool))
    for head in range(4):
        part = slice(8 * head, 8 * (head + 1))
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(8)
        heads.append(F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v[..., part])
    expected = attention.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(attention(x), expected, atol=1e-5)


def test_generate_appends_tokens_and_crops_context():
    model = small_model()
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 20, temperature=0.8, top_k=3,
                         generator=torch.Generator().manual_seed(1))
    assert out.shape == (1, 23)
    assert int(out.max()) < 11


def test_top_k_one_is_greedy():
    model = small_model()
    context = torch.tensor([[1, 2, 3]])
    out = model.generate(context, 1, top_k=1, generator=torch.Generator().manual_seed(5))
    logits, _ = model(context)
    assert out[0, -1].item() == logits[0, -1].argmax().item()


def test_lm_head_shares_the_token_embedding():
    model = small_model()
    assert model.lm_head.weight is model.token_embedding.weight


def test_untied_lm_head_has_its_own_weights():
    model = small_model(tie_embeddings=False)
    assert model.lm_head.weight is not model.token_embedding.weight
    assert model.num_parameters() == small_model().num_parameters() + 11 * 32
    idx = torch.randint(11, (2, 8))
    model(idx, idx)[1].backward()
    # Both matrices get gradients of their own: the head is a separate parameter.
    assert model.lm_head.weight.grad is not None and model.token_embedding.weight.grad is not None
    assert not torch.equal(model.lm_head.weight.grad, model.token_embedding.weight.grad)


def test_every_model_setting_reaches_the_model():
    config = build_config("cpu", {"n_layer": "3", "bias": "false", "tie_embeddings": "true", "activation": "relu"})
    args = model_args(config, vocab_size=65)
    model_fields = {field.name for field in dataclasses.fields(GPTConfig)} - {"vocab_size"}
    assert {name: getattr(args, name) for name in model_fields} == {
        name: getattr(config, name) for name in model_fields}
    assert model_args(build_config("cpu"), vocab_size=65).tie_embeddings is False


def test_relu_activation_cuts_negative_values():
    torch.manual_seed(0)
    gelu, relu = small_model(), small_model(activation="relu")
    relu.load_state_dict(gelu.state_dict())
    x = torch.randn(2, 8, 32)
    hidden = relu.blocks[0].mlp.up(x)
    assert torch.equal(relu.blocks[0].mlp(x), relu.blocks[0].mlp.down(hidden.clamp(min=0)))
    assert not torch.allclose(gelu.blocks[0].mlp(x), relu.blocks[0].mlp(x))


def test_bfloat16_autocast_on_cpu_keeps_attention_in_float32(monkeypatch):
    """Under CPU autocast the attention itself gets float32 inputs (its bfloat16 backward is slow);
    the loss and gradients stay close to float32's."""
    model = small_model().train()
    idx = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(idx, -1, dims=1)
    _, reference = model(idx, targets)
    reference.backward()
    reference_grads = [param.grad.clone() for param in model.parameters()]
    model.zero_grad()
    attention_dtypes = []
    fused = F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        attention_dtypes.append(q.dtype)
        return fused(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
    loss.backward()
    assert logits.dtype == torch.bfloat16  # the LM head did run in bfloat16
    assert attention_dtypes == [torch.float32] * 2
    assert loss.item() == pytest.approx(reference.item(), rel=0.02)
    for param, expected in zip(model.parameters(), reference_grads):
        assert torch.allclose(param.grad, expected, rtol=0.1, atol=2e-3)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("variant", [{}, {"bias": False}, {"tie_embeddings": False}])
def test_the_parameter_count_from_the_shape_is_the_models(preset, variant):
    args = dataclasses.replace(model_args(build_config(preset), vocab_size=65), **variant)
    with torch.device("meta"):
        model = GPT(args)
    assert args.parameter_count() == model.num_parameters()
