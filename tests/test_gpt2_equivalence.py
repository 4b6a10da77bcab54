"""The book's softmax transformer is GPT-2: on the weights of a Hugging Face ``transformers.GPT2Model`` (tanh GELU,
dropout 0) plus Garg et al.'s read-in ``Linear(d, width)`` and read-out ``Linear(width, 1)``, an
:class:`icl.models.SoftmaxTransformer` member predicts what Garg et al.'s model predicts at every x token.

``transformers`` is a test-only dependency (the ``test`` extra); nothing in ``icl`` imports it."""

from __future__ import annotations

import pytest
import torch

from icl.models import SoftmaxTransformer

transformers = pytest.importorskip("transformers")


def garg_model(dim: int, width: int, n_layers: int, n_heads: int, n_positions: int, seed: int):
    """GPT-2 backbone and read-in/read-out maps as in Garg et al.'s ``TransformerModel``, randomly initialised."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_positions=n_positions,
        n_embd=width,
        n_layer=n_layers,
        n_head=n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        activation_function="gelu_new",
    )
    backbone = transformers.GPT2Model(config).eval()
    with torch.no_grad():  # GPT-2 starts LayerNorms at (1, 0) and biases at 0: move them so a mix-up would show
        for parameter in backbone.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return backbone, torch.nn.Linear(dim, width), torch.nn.Linear(width, 1)


def garg_predictions(backbone, read_in, read_out, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s forward pass: interleaved tokens x_i, (y_i, 0, …), read-out at the x tokens. -> (B, k)."""
    labels = torch.zeros_like(xs)
    labels[..., 0] = ys
    tokens = torch.stack([xs, labels], dim=2).flatten(1, 2)
    hidden = backbone(inputs_embeds=read_in(tokens)).last_hidden_state
    return read_out(hidden[:, 0::2]).squeeze(-1)


def load_members(model: SoftmaxTransformer, members: list[tuple]) -> None:
    """Copy each (backbone, read_in, read_out) into the member of ``model`` with the same index."""
    L = model.n_layers
    with torch.no_grad():
        for e, (backbone, read_in, read_out) in enumerate(members):
            hf = backbone.state_dict()

            def layers(name: str, hf: dict = hf) -> torch.Tensor:
                return torch.stack([hf[f"h.{i}.{name}"] for i in range(L)])

            model.read_in[e] = read_in.weight.T  # torch.nn.Linear stores (out, in); the book's maps are (in, out)
            model.read_in_bias[e] = read_in.bias
            model.positions[e] = hf["wpe.weight"][: model.positions.shape[1]]
            model.ln1_gain[e], model.ln1_bias[e] = layers("ln_1.weight"), layers("ln_1.bias")
            model.qkv[e], model.qkv_bias[e] = (
                layers("attn.c_attn.weight"),
                layers("attn.c_attn.bias"),
            )  # Conv1D: (in, out)
            model.attn_out[e], model.attn_out_bias[e] = layers("attn.c_proj.weight"), layers("attn.c_proj.bias")
            model.ln2_gain[e], model.ln2_bias[e] = layers("ln_2.weight"), layers("ln_2.bias")
            model.mlp_in[e], model.mlp_in_bias[e] = layers("mlp.c_fc.weight"), layers("mlp.c_fc.bias")
            model.mlp_out[e], model.mlp_out_bias[e] = layers("mlp.c_proj.weight"), layers("mlp.c_proj.bias")
            model.ln_final_gain[e], model.ln_final_bias[e] = hf["ln_f.weight"], hf["ln_f.bias"]
            model.read_out[e] = read_out.weight.T
            model.read_out_bias[e] = read_out.bias


def book_model(members: list[tuple], dim: int, k: int) -> SoftmaxTransformer:
    """One SoftmaxTransformer holding every Hugging Face member, of their shape, for prompts of k examples."""
    config = members[0][0].config
    model = SoftmaxTransformer(
        dim,
        width=config.n_embd,
        n_layers=config.n_layer,
        n_heads=config.n_head,
        max_examples=k,
        n_models=len(members),
        generator=torch.Generator().manual_seed(0),
    )
    load_members(model, members)
    return model


@pytest.mark.parametrize(("width", "n_layers", "n_heads"), [(64, 4, 4), (32, 3, 2)])
def test_same_predictions_as_hugging_face_gpt2(width: int, n_layers: int, n_heads: int) -> None:
    dim, k = 5, 11
    members = [garg_model(dim, width, n_layers, n_heads, 2 * k, seed) for seed in (0, 1)]
    model = book_model(members, dim, k)
    g = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(16, k, dim, generator=g), torch.randn(16, k, generator=g)
    with torch.no_grad():
        expected = torch.stack([garg_predictions(*member, xs, ys) for member in members])
        got = model(xs, ys)
    assert expected.abs().mean() > 0.1  # the comparison is not of two near-zero outputs
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    # the members differ, so a member reading another's weights would fail
    assert (expected[0] - expected[1]).abs().max() > 0.1


def test_hidden_states_are_hugging_faces_at_the_x_tokens() -> None:
    """The layer probes read :meth:`SoftmaxTransformer.hidden_states`: Hugging Face's ``hidden_states[1:]`` (the
    residual stream after each block, the last after the final LayerNorm) at the x tokens."""
    dim, k, width, n_layers, n_heads = 5, 11, 32, 3, 2
    members = [garg_model(dim, width, n_layers, n_heads, 2 * k, seed) for seed in (3, 4)]
    model = book_model(members, dim, k)
    g = torch.Generator().manual_seed(5)
    xs, ys = torch.randn(8, k, dim, generator=g), torch.randn(8, k, generator=g)
    with torch.no_grad():
        got = model.hidden_states(xs, ys)  # (L, E, B, k, D)
        for e, (backbone, read_in, _) in enumerate(members):
            labels = torch.zeros_like(xs)
            labels[..., 0] = ys
            tokens = torch.stack([xs, labels], dim=2).flatten(1, 2)
            hidden = backbone(inputs_embeds=read_in(tokens), output_hidden_states=True).hidden_states
            expected = torch.stack(hidden[1:])[:, :, 0::2]  # (L, B, k, D)
            torch.testing.assert_close(got[:, e], expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert got.shape == (n_layers, 2, 8, k, width)
