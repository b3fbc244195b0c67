"""Centred retrieval (ICKD.SIMILARITY centered) and tie groups of equal bank rows, against brute force."""
from __future__ import annotations

import pytest
import torch

from ickd_plugin.config import get_ickd_defaults, parse_ickd_config
from ickd_plugin.memory_bank import MemoryBank
from ickd_plugin.retrieval import retrieve
from ickd_plugin.ties import find_tie_groups, row_hashes

pytestmark = pytest.mark.numerics


def post_relu_bank(rows: int = 60, dim: int = 8, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features with a large common component, as pooled post-ReLU features are."""
    g = torch.Generator().manual_seed(seed)
    features = (torch.randn(rows, dim, generator=g) * 0.3 + 2.0).clamp_min(0.0)
    labels = torch.randint(classes, (rows,), generator=g)
    labels[:classes] = torch.arange(classes)
    return features, labels


def run(bank: MemoryBank, queries, labels, self_rows, k, n, chunk_size=0):
    return retrieve(queries, labels, self_rows, bank.features, bank.inv_norms, bank.class_rows, k, n,
                    chunk_size=chunk_size, center=bank.similarity_center, ties=bank.ties)


def centred_reference(features, labels, query, label, self_row, k, n):
    """Plain Python in float64: cos(q - c, h - c) with c the mean row; sort by (similarity desc, row asc)."""
    rows = features.double()
    center = rows.mean(dim=0)
    q = query.double() - center
    sims = [float((rows[r] - center) @ q / ((rows[r] - center).norm() * q.norm())) for r in range(rows.shape[0])]
    same = [r for r in range(len(sims)) if int(labels[r]) == label and r != self_row]
    other = [r for r in range(len(sims)) if int(labels[r]) != label]
    order = lambda rs: sorted(rs, key=lambda r: (-sims[r], r))  # noqa: E731
    return order(same)[:k], order(other)[:n], sims


@pytest.mark.parametrize("chunk_size", [0, 1, 7, 60])
def test_centred_retrieval_matches_brute_force(chunk_size: int) -> None:
    features, labels = post_relu_bank()
    bank = MemoryBank(centered=True)
    bank.fill(features, labels, torch.arange(60), 4, "cpu")
    torch.testing.assert_close(bank.center, features.mean(dim=0), rtol=0, atol=1e-6)
    torch.testing.assert_close(bank.inv_norms, 1 / (features - features.mean(dim=0)).norm(dim=1), rtol=1e-6, atol=0)
    g = torch.Generator().manual_seed(1)
    queries = (torch.randn(6, 8, generator=g) * 0.3 + 2.0).clamp_min(0.0)
    self_rows = torch.tensor([0, 9, 21, -1, 40, 59])
    query_labels = labels[self_rows.clamp(min=0)]
    found = run(bank, queries, query_labels, self_rows, 3, 5, chunk_size)
    for b in range(6):
        pos, neg, sims = centred_reference(features, labels, queries[b], int(query_labels[b]), int(self_rows[b]), 3, 5)
        # On this data neighbouring candidates' centred cosines differ by far more than float32's
        # error on an 8-term dot product, so rows compare exactly and similarities to 1e-5.
        assert found.pos_rows[b].tolist() == pos and found.neg_rows[b].tolist() == neg
        torch.testing.assert_close(found.pos_sim[b], torch.tensor([sims[r] for r in pos], dtype=torch.float32),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(found.neg_sim[b], torch.tensor([sims[r] for r in neg], dtype=torch.float32),
                                   rtol=0, atol=1e-5)


def test_centring_spreads_the_similarities_of_post_relu_features() -> None:
    # The reason for the option: plain cosines of such features crowd near 1.
    features, labels = post_relu_bank(rows=200)
    plain, centred = MemoryBank(), MemoryBank(centered=True)
    for bank in (plain, centred):
        bank.fill(features, labels, torch.arange(200), 4, "cpu")
    queries, query_labels, self_rows = features[:20], labels[:20], torch.arange(20)
    spread = {}
    for name, bank in (("plain", plain), ("centred", centred)):
        found = run(bank, queries, query_labels, self_rows, 5, 5)
        spread[name] = float(torch.cat([found.pos_sim, found.neg_sim], dim=1).std())
        assert found.pos_sim.max() <= 1.0 + 1e-6
    assert spread["centred"] > 5 * spread["plain"], spread


def test_refresh_keeps_centre_and_norms_those_of_the_current_rows() -> None:
    features, labels = post_relu_bank()
    bank = MemoryBank(centered=True, persistent=True)
    bank.fill(features, labels, torch.arange(60), 4, "cpu")
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        rows = torch.randint(60, (8,), generator=g)
        bank.refresh(rows, torch.rand(8, 8, generator=g) * 3, momentum=0.5)
    current = bank.features.double()
    torch.testing.assert_close(bank.feature_sum, current.sum(dim=0), rtol=0, atol=1e-9)
    torch.testing.assert_close(bank.center, current.mean(dim=0).float(), rtol=0, atol=1e-6)
    expected = 1 / (current - current.mean(dim=0)).norm(dim=1)
    torch.testing.assert_close(bank.inv_norms, expected.float(), rtol=1e-5, atol=0)
    # a checkpoint restores centre, norms and ties as they were
    other = MemoryBank(centered=True, persistent=True)
    other.load_state_dict(bank.state_dict())
    for name in ("features", "feature_sum", "center", "inv_norms", "tie_rows"):
        assert torch.equal(getattr(other, name), getattr(bank, name)), name


def test_a_checkpoint_without_the_derived_buffers_still_loads() -> None:
    features, labels = post_relu_bank()
    bank = MemoryBank(centered=True, persistent=True)
    bank.fill(features, labels, torch.arange(60), 4, "cpu")
    old = {k: v for k, v in bank.state_dict().items() if k in ("features", "inv_norms", "labels", "row_of_index", "class_rows")}
    restored = MemoryBank(centered=True, persistent=True)
    restored.load_state_dict(old)  # a checkpoint written before centring and tie groups existed
    assert torch.equal(restored.center, bank.center) and torch.equal(restored.inv_norms, bank.inv_norms)


def test_similarity_option_is_validated() -> None:
    node = get_ickd_defaults()
    assert parse_ickd_config(node).similarity == "cosine"
    node.SIMILARITY = "centered"
    assert parse_ickd_config(node).similarity == "centered"
    node.SIMILARITY = "centred"
    with pytest.raises(ValueError, match=r"ICKD.SIMILARITY = 'centred'; allowed: cosine, centered"):
        parse_ickd_config(node)


# -- ties ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tie_groups_are_the_sets_of_equal_rows(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(30, 6, generator=g).to(dtype)
    features[[7, 19, 25]] = features[4].clone()
    features[28] = features[11].clone()
    features[13] = -features[4]  # equal in magnitude, not in bits: not a tie
    rows, groups, representatives = find_tie_groups(features)
    assert rows.tolist() == [4, 7, 11, 19, 25, 28]
    assert groups.tolist() == [0, 0, 1, 0, 0, 1]  # groups numbered by their lowest row
    assert torch.equal(representatives, features[[4, 11]])
    assert row_hashes(features)[4] == row_hashes(features)[25]
    none = find_tie_groups(torch.randn(10, 6, generator=g).to(dtype))
    assert none[0].numel() == 0 and none[2].shape == (0, 6)


def duplicate_bank(dtype: torch.dtype, centered: bool, seed: int) -> tuple[MemoryBank, torch.Tensor, torch.Tensor]:
    """A bank whose row 3 is repeated at rows 20, 33 and 51 (class 0), queries close to it (class 1)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(64, 24, generator=g)
    labels = torch.randint(1, 4, (64,), generator=g)
    features[[20, 33, 51]] = features[3].clone()
    labels[[3, 20, 33, 51]] = 0
    bank = MemoryBank(dtype, centered=centered)
    bank.fill(features.to(dtype), labels, torch.arange(64), 4, "cpu")
    queries = features[3] + 0.05 * torch.randn(16, 24, generator=g)
    return bank, queries, labels


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_duplicate_rows_tie_whatever_the_chunking(dtype: torch.dtype, centered: bool) -> None:
    # Chunk sizes that put the copies in different chunks at different offsets: without tie
    # groups their similarities may differ in the last bit and a later copy can win.
    for seed in range(4):
        bank, queries, _ = duplicate_bank(dtype, centered, seed)
        assert bank.ties is not None and bank.tie_rows.tolist() == [3, 20, 33, 51]
        results = []
        for chunk_size in (0, 1, 2, 5, 7, 13, 17, 32, 63):
            found = run(bank, queries, torch.ones(16, dtype=torch.long), torch.full((16,), -1), 2, 2, chunk_size)
            # the copies are the nearest other-class rows of every query: the two lowest win
            assert found.neg_rows.tolist() == [[3, 20]] * 16, (seed, chunk_size)
            assert torch.equal(found.neg_sim[:, 0], found.neg_sim[:, 1])
            results.append(found)
        for found in results[1:]:
            assert torch.equal(found.neg_sim, results[0].neg_sim) and torch.equal(found.pos_rows, results[0].pos_rows)


def test_a_refreshed_row_leaves_its_tie_group() -> None:
    bank, _, _ = duplicate_bank(torch.float32, centered=False, seed=0)
    bank.refresh(torch.tensor([20]), torch.randn(1, 24), momentum=0.5)
    assert bank.tie_rows.tolist() == [3, 33, 51]
    assert torch.equal(bank.tie_features[0], bank.features[3])
