"""Backbones and item encoders on tiny tensors: shapes, causality, padding, variants."""

import pytest
import torch

from genair_core.recommenders.models import (
    BACKBONES,
    VARIANTS,
    ModelConfig,
    UnknownNameError,
    build_model,
)
from genair_core.recommenders.models.item_encoders import AdapterEncoder, frozen_table

N_ITEMS, DIM = 12, 8


def table(n_items=N_ITEMS, dim=DIM):
    torch.manual_seed(0)
    vectors = torch.randn(n_items + 1, dim)
    vectors[0] = 0
    return vectors


def calibration_weights(hidden=16, dim=DIM):
    """What the calibration job stores: an adapter's state dict, here of a fresh one."""
    torch.manual_seed(1)
    return AdapterEncoder(table(dim=dim), hidden).adapter.state_dict()


def model(backbone, variant="id", **overrides):
    warm = calibration_weights() if VARIANTS[variant].warm else None
    torch.manual_seed(0)
    config = ModelConfig(hidden=16, max_len=10, dropout=0.0, **overrides)
    return build_model(
        backbone, variant, config, N_ITEMS, table(), input_dims=DIM // 2, adapter_weights=warm
    ).eval()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shapes_of_every_backbone_and_variant(backbone, variant):
    m = model(backbone, variant)
    inputs = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    assert m(inputs).shape == (2, 5, 16)
    assert m.user_vectors(inputs).shape == (2, 16)
    assert m.encoder.all_items().shape == (N_ITEMS + 1, 16)
    window = torch.tensor([[0, 3, 4, 5, 6, 7]])
    pair_inputs, targets = m.training_pairs(window, torch.Generator().manual_seed(0))
    assert pair_inputs.shape == targets.shape == (1, 5)


def test_sasrec_is_causal():
    """Changing later items never changes earlier outputs (the reference's mask is commented
    out, so there it would)."""
    m = model("sasrec", n_layers=2)
    a = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 5:] = torch.tensor([11, 12, 1])
    out_a, out_b = m(a), m(b)
    torch.testing.assert_close(out_a[:, :5], out_b[:, :5])
    assert not torch.allclose(out_a[:, 5:], out_b[:, 5:])


def test_gru4rec_is_causal_and_ignores_padding_amount():
    m = model("gru4rec")
    a = torch.tensor([[3, 4, 5, 6]])
    b = torch.tensor([[3, 4, 9, 1]])
    torch.testing.assert_close(m(a)[:, :2], m(b)[:, :2])
    # The same history with more padding in front gives the same state: it starts at zero.
    padded = torch.tensor([[0, 0, 0, 3, 4, 5, 6]])
    torch.testing.assert_close(m(padded)[:, 3:], m(a), atol=1e-6, rtol=1e-5)


def test_bert4rec_is_bidirectional():
    m = model("bert4rec")
    a = torch.tensor([[0, 3, 4, 5, 6]])
    b = torch.tensor([[0, 3, 4, 5, 9]])
    assert not torch.allclose(m(a)[:, 1], m(b)[:, 1])


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec"])
def test_padding_does_not_change_the_outputs_of_real_positions(backbone):
    m = model(backbone)
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[0, 0, 3, 4, 5]])
    # Positions count from the most recent item, so the padded window sees the same positions.
    torch.testing.assert_close(m(padded)[:, 2:], m(short), atol=1e-5, rtol=1e-5)
    # BERT4Rec's query drops the oldest column for its [MASK]: give both windows room for it.
    roomy = torch.tensor([[0, 3, 4, 5]])
    torch.testing.assert_close(m.user_vectors(padded), m.user_vectors(roomy), atol=1e-5, rtol=1e-5)


def test_padding_rows_of_item_vectors_are_zero():
    for variant in VARIANTS:
        m = model("sasrec", variant)
        assert torch.count_nonzero(m.encoder(torch.tensor([0, 0]))) == 0
        assert torch.count_nonzero(m.encoder.all_items()[0]) == 0


def test_every_real_item_keeps_its_own_frozen_vector():
    """The reference pads with `insert at -1`, which gives the last item a zero vector."""
    ids = [f"item{i}" for i in range(1, N_ITEMS + 1)]
    vectors = torch.randn(N_ITEMS, DIM).numpy()
    shuffled = list(reversed(range(N_ITEMS)))  # the vectors table is in another order
    frozen = frozen_table(ids, [ids[i] for i in shuffled], vectors[shuffled])
    assert frozen.shape == (N_ITEMS + 1, DIM)
    assert torch.count_nonzero(frozen[0]) == 0
    for index in range(1, N_ITEMS + 1):
        torch.testing.assert_close(frozen[index], torch.from_numpy(vectors[index - 1]))
    encoder = AdapterEncoder(frozen, hidden=4)
    outputs = encoder.all_items()
    assert outputs[N_ITEMS].abs().sum() > 0  # the last item is a real item
    assert len({tuple(row.tolist()) for row in outputs[1:]}) == N_ITEMS


def test_an_item_without_a_vector_is_an_error_naming_it():
    with pytest.raises(ValueError, match="item3"):
        frozen_table(["item1", "item2", "item3"], ["item1", "item2"], torch.zeros(2, 4).numpy())


def test_ablations_keep_one_half_of_the_vector():
    full = model("sasrec", "llm").encoder.table
    assert full.shape[1] == DIM
    assert torch.equal(model("sasrec", "input-only").encoder.table, full[:, : DIM // 2])
    assert torch.equal(model("sasrec", "gen-only").encoder.table, full[:, DIM // 2 :])


def test_frozen_table_is_not_trained():
    m = model("sasrec", "genair")
    assert "encoder.table" not in dict(m.named_parameters())
    assert "encoder.table" in m.state_dict()


def test_bert4rec_masks_only_real_items_and_targets_only_masked_positions():
    m = model("bert4rec", mask_prob=0.5)
    window = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10]])
    inputs, targets = m.training_pairs(window, torch.Generator().manual_seed(1))
    masked = inputs == N_ITEMS + 1
    assert masked.any()
    assert not masked[0, :1].any()  # padding is never masked
    assert torch.equal(targets[masked], window[:, 1:][masked])
    assert torch.count_nonzero(targets[~masked]) == 0
    query = m.user_vectors(window[:, 1:])
    assert query.shape == (1, 16)


def test_bert4rec_mask_last_prob_masks_only_the_last_item_of_that_share_of_rows():
    window = torch.randint(1, N_ITEMS + 1, (400, 10))
    window[:5, :4] = 0  # short histories: the last item is still a real one
    m = model("bert4rec", mask_prob=0.3, mask_last_prob=0.5)
    inputs, targets = m.training_pairs(window, torch.Generator().manual_seed(2))
    masked = inputs == N_ITEMS + 1
    last_only = masked[:, -1] & (masked.sum(1) == 1)
    assert 150 < int(last_only.sum()) < 250  # ~half the rows, a few cloze rows look the same
    assert torch.equal(targets[:, -1][last_only], window[:, -1][last_only])

    every = model("bert4rec", mask_prob=0.3, mask_last_prob=1.0)
    inputs, targets = every.training_pairs(window, torch.Generator().manual_seed(2))
    assert torch.equal(inputs[:, :-1], window[:, 1:-1])
    assert (inputs[:, -1] == N_ITEMS + 1).all()
    assert torch.equal(targets[:, -1], window[:, -1])
    assert not targets[:, :-1].any()

    # 0 (the reference) draws exactly the masks it drew before the setting existed
    reference = model("bert4rec", mask_prob=0.3)
    plain = reference.training_pairs(window, torch.Generator().manual_seed(2))
    draw = torch.rand(window[:, 1:].shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(plain[0] == N_ITEMS + 1, (draw < 0.3) & (window[:, 1:] != 0))


def test_unknown_names_list_the_valid_ones():
    config = ModelConfig()
    with pytest.raises(UnknownNameError, match="sasrec, bert4rec, gru4rec"):
        build_model("caser", "id", config, N_ITEMS, input_dims=DIM // 2)
    with pytest.raises(UnknownNameError, match="genair"):
        build_model("sasrec", "llm2", config, N_ITEMS, input_dims=DIM // 2)
    with pytest.raises(ValueError, match="item_embeddings"):
        build_model("sasrec", "genair", config, N_ITEMS, table=None, input_dims=DIM // 2)


@pytest.mark.parametrize("variant", ["genair", "genair-id"])
def test_adapter_dropout_acts_only_while_training_and_leaves_the_weights_as_without(variant):
    plain, dropped = model("sasrec", variant), model("sasrec", variant, adapter_dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    for name, weights in plain.state_dict().items():
        torch.testing.assert_close(dropped.state_dict()[name], weights, rtol=0, atol=0)
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    # Evaluation (and serving) never drops: the same scores as the model without dropout.
    torch.testing.assert_close(dropped.encoder.all_items(), plain.encoder.all_items())
    torch.testing.assert_close(dropped(items), plain(items))
    dropped.train()
    torch.manual_seed(3)
    trained_view = dropped.encoder.all_items()
    assert not torch.allclose(trained_view[1:], plain.encoder.all_items()[1:])
    assert torch.all(trained_view[0] == 0)  # padding stays zero
    assert torch.all(dropped.encoder(items)[0, 3] == 0)
