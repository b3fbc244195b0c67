"""Retrieval against a brute-force Python reference: class constraints, self-exclusion, ties, chunks."""
from __future__ import annotations

import math

import pytest
import torch

from float_tolerance import sum_atol
from ickd_plugin.memory_bank import MemoryBank, class_row_table
from ickd_plugin.retrieval import auto_chunk_size, exact_topk, retrieve


# Float values against float64 references: run again on a second kernel path by scripts/test.sh.
pytestmark = pytest.mark.numerics


def make_bank(num_rows: int, dim: int, num_classes: int, seed: int = 0) -> MemoryBank:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_rows, dim, generator=generator)
    labels = torch.randint(num_classes, (num_rows,), generator=generator)
    labels[:num_classes] = torch.arange(num_classes)  # every class present
    bank = MemoryBank()
    bank.fill(features, labels, torch.arange(num_rows), num_classes, "cpu")
    return bank


def run(bank: MemoryBank, queries, labels, self_rows, k, n, all_same_class=False, chunk_size=0, strategy="auto"):
    return retrieve(queries, labels, self_rows, bank.features, bank.inv_norms, bank.class_rows,
                    k, n, all_same_class=all_same_class, chunk_size=chunk_size, strategy=strategy)


def reference(bank: MemoryBank, query, label, self_row, k, n):
    """One query, plain Python: cosine in float64, sort by (similarity desc, row asc)."""
    rows = bank.features.double()
    q = query.double()
    sims = [float(rows[r] @ q / (rows[r].norm() * q.norm())) for r in range(rows.shape[0])]
    same = [r for r in range(len(sims)) if int(bank.labels[r]) == label and r != self_row]
    other = [r for r in range(len(sims)) if int(bank.labels[r]) != label]
    order = lambda rs: sorted(rs, key=lambda r: (-sims[r], r))  # noqa: E731
    return order(same)[:k], order(other)[:n], sims


@pytest.mark.parametrize("chunk_size, strategy", [(0, "gather"), (7, "gather"), (50, "gather"), (0, "by_class")])
def test_matches_brute_force(chunk_size: int, strategy: str) -> None:
    bank = make_bank(num_rows=60, dim=5, num_classes=4)
    queries = torch.randn(9, 5)
    self_rows = torch.tensor([0, 5, 11, -1, 30, 42, 59, 3, 17])
    labels = bank.labels[self_rows.clamp(min=0)]
    labels[3] = 2  # a query without a bank row
    found = run(bank, queries, labels, self_rows, k=4, n=6, chunk_size=chunk_size, strategy=strategy)
    for b in range(9):
        pos, neg, sims = reference(bank, queries[b], int(labels[b]), int(self_rows[b]), 4, 6)
        # Rows compared exactly: on this data adjacent candidate similarities differ by >= 6e-4,
        # far above float32's error on a 5-term cosine (< 3e-6), so no summation order can swap two.
        assert found.pos_rows[b].tolist() == pos
        assert found.neg_rows[b].tolist() == neg
        assert torch.allclose(found.pos_sim[b], torch.tensor([sims[r] for r in pos], dtype=torch.float32), atol=1e-5)
        assert torch.allclose(found.neg_sim[b], torch.tensor([sims[r] for r in neg], dtype=torch.float32), atol=1e-5)
        assert all(int(bank.labels[r]) == labels[b] for r in pos) and int(self_rows[b]) not in pos
        assert all(int(bank.labels[r]) != labels[b] for r in neg)


def test_all_same_class_uses_every_other_same_class_row() -> None:
    bank = make_bank(num_rows=40, dim=4, num_classes=3)
    self_rows = torch.tensor([0, 1, 2, 10])
    labels = bank.labels[self_rows]
    found = run(bank, torch.randn(4, 4), labels, self_rows, k=1, n=2, all_same_class=True)
    for b in range(4):
        chosen = sorted(found.pos_rows[b][found.pos_mask[b]].tolist())
        expected = [r for r in range(40) if int(bank.labels[r]) == labels[b] and r != self_rows[b]]
        assert chosen == expected
        assert torch.isinf(found.pos_sim[b][~found.pos_mask[b]]).all()


def test_ties_broken_by_lower_row_whatever_the_chunking() -> None:
    # rows 2, 5, 7 (class 0) and 1, 4, 8 (class 1) hold the same feature: exact ties
    features = torch.randn(10, 3)
    features[[5, 7]] = features[2].clone()
    features[[4, 8]] = 2 * features[1]  # same direction: the same cosine, bit for bit (x2 is exact)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0, 1, 0])
    bank = MemoryBank()
    bank.fill(features, labels, torch.arange(10), 2, "cpu")
    queries = features[[2, 1, 1, 2]]
    labels_q = torch.tensor([0, 1, 0, 1])
    self_rows = torch.tensor([9, 4, -1, -1])
    for chunk_size, strategy in ((0, "gather"), (1, "gather"), (3, "gather"), (4, "gather"), (0, "by_class")):
        found = run(bank, queries, labels_q, self_rows, 2, 2, chunk_size=chunk_size, strategy=strategy)
        assert found.pos_rows[0].tolist() == [2, 5]  # 2, 5, 7 tie at cosine 1
        assert found.pos_rows[1].tolist() == [1, 8]  # 1, 4, 8 tie; 4 is the query itself
        assert found.neg_rows[2].tolist() == [1, 4]
        assert found.neg_rows[3].tolist() == [2, 5]


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_both_strategies_give_the_same_rows_bit_for_bit(dtype: torch.dtype, centered: bool) -> None:
    # few large classes, repeated rows (exact ties, also across classes), row groups as a dense bank's images
    g = torch.Generator().manual_seed(7)
    features = torch.randn(300, 6, generator=g).relu()
    features[100:140] = features[:40]
    labels = torch.randint(3, (300,), generator=g)
    labels[:3] = torch.arange(3)
    bank = MemoryBank(dtype, centered=centered)
    bank.fill(features.to(dtype), labels, torch.arange(300), 3, "cpu")
    groups = torch.arange(300) // 10
    queries = torch.cat([features[:20] + 0.01 * torch.randn(20, 6, generator=g), torch.randn(44, 6, generator=g)])
    query_labels, query_groups = torch.randint(3, (64,), generator=g), torch.randint(30, (64,), generator=g)
    for row_groups, self_rows in ((None, torch.randint(-1, 300, (64,), generator=g)), (groups, query_groups)):
        found = [retrieve(queries, query_labels, self_rows, bank.features, bank.inv_norms, bank.class_rows, 5, 7,
                          center=bank.similarity_center, ties=bank.ties, row_groups=row_groups, strategy=strategy)
                 for strategy in ("gather", "by_class")]
        for name in ("pos_rows", "pos_sim", "neg_rows", "neg_sim"):
            assert torch.equal(getattr(found[0], name), getattr(found[1], name)), name
        assert (bank.labels[found[1].pos_rows] == query_labels[:, None]).all()
        assert (bank.labels[found[1].neg_rows] != query_labels[:, None]).all()
    # a class with fewer rows than K (as a shard of a sharded bank may hold): the same -inf padding
    small = MemoryBank(dtype, centered=centered)
    labels_small = torch.cat([torch.zeros(297, dtype=torch.long), torch.tensor([1, 1, 2])])
    small.fill(features.to(dtype), labels_small, torch.arange(300), 3, "cpu")
    query_labels = torch.tensor([1, 2, 0, 1] * 16)
    found = [retrieve(queries, query_labels, torch.full((64,), -1), small.features, small.inv_norms, small.class_rows,
                      5, 7, center=small.similarity_center, ties=small.ties, strategy=strategy)
             for strategy in ("gather", "by_class")]
    for name in ("pos_rows", "pos_sim", "neg_rows", "neg_sim"):
        assert torch.equal(getattr(found[0], name), getattr(found[1], name)), name
    assert torch.isinf(found[1].pos_sim[0, 2:]).all() and torch.isinf(found[1].pos_sim[1, 1:]).all()


def test_strategy_is_chosen_by_table_size_and_checked(monkeypatch) -> None:
    from ickd_plugin import retrieval

    bank = make_bank(num_rows=60, dim=5, num_classes=4)
    queries, labels, self_rows = torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), torch.full((4,), -1)
    calls = []
    original = retrieval._retrieve_by_class
    monkeypatch.setattr(retrieval, "_retrieve_by_class", lambda *args: calls.append(args) or original(*args))
    run(bank, queries, labels, self_rows, 2, 2)
    assert not calls  # a 4 x 20 table of class rows: gather
    monkeypatch.setattr(retrieval, "BY_CLASS_MIN_ENTRIES", 4)
    run(bank, queries, labels, self_rows, 2, 2)
    assert len(calls) == 1
    run(bank, queries, labels, self_rows, 2, 2, chunk_size=7)  # several blocks: gather
    run(bank, queries, labels, self_rows, 2, 2, all_same_class=True)  # IC-KD-all: gather
    assert len(calls) == 1
    with pytest.raises(ValueError, match="strategy 'by_class' needs one similarity block"):
        run(bank, queries, labels, self_rows, 2, 2, chunk_size=7, strategy="by_class")
    with pytest.raises(ValueError, match="strategy = 'fast'"):
        run(bank, queries, labels, self_rows, 2, 2, strategy="fast")


def test_exact_topk_with_and_without_ids() -> None:
    values = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    top, cols = exact_topk(values, 2)
    assert cols.tolist() == [[1, 2], [0, 1]] and top.tolist() == [[3.0, 3.0], [0.0, 0.0]]
    ids = torch.tensor([[9, 8, 7, 6, 5], [4, 3, 2, 1, 0]])
    top, cols = exact_topk(values, 2, ids=ids)
    assert cols.tolist() == [[4, 2], [4, 3]]  # among the 3.0s the smallest ids are 5 (col 4) and 7 (col 2)


def test_auto_chunk_size() -> None:
    assert auto_chunk_size(64, 50_000) == 50_000
    assert auto_chunk_size(256, 1_281_167) == (1 << 26) // 256
    assert auto_chunk_size(4, 100, chunk_size=30) == 30


def test_class_row_table_and_row_map() -> None:
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    assert class_row_table(labels, 4).tolist() == [[1, 4, -1], [3, -1, -1], [0, 2, 5], [-1, -1, -1]]
    bank = MemoryBank()
    bank.fill(torch.randn(3, 2), torch.tensor([1, 0, 1]), torch.tensor([30, 10, 20]), 2, "cpu")
    assert bank.labels.tolist() == [0, 1, 1]  # rows sorted by dataset index
    assert bank.rows_for(torch.tensor([20, 10, 30, 11])).tolist() == [1, 0, 2, -1]


def test_capacity_errors_name_the_key_and_the_class() -> None:
    bank = MemoryBank()
    bank.fill(torch.randn(7, 2), torch.tensor([0, 0, 0, 1, 1, 2, 2]), torch.arange(7), 3, "cpu")
    bank.check_capacity(1, 4, all_same_class=False)
    with pytest.raises(ValueError, match=r"ICKD.K = 2 .*class 1 has 2 training samples.*ICKD.ALL_SAME_CLASS"):
        bank.check_capacity(2, 1, all_same_class=False)
    bank.check_capacity(50, 1, all_same_class=True)  # K is unused by IC-KD-all
    with pytest.raises(ValueError, match=r"ICKD.N = 5 .*\(4\)"):
        bank.check_capacity(1, 5, all_same_class=False)


def test_cosine_is_scale_invariant() -> None:
    bank = make_bank(20, 3, 2)
    q = torch.randn(2, 3)
    labels, rows = torch.tensor([0, 1]), torch.tensor([-1, -1])
    a = run(bank, q, labels, rows, 2, 2)
    b = run(bank, 1000 * q, labels, rows, 2, 2)
    assert torch.equal(a.pos_rows, b.pos_rows) and torch.equal(a.neg_rows, b.neg_rows)
    assert math.isclose(float(a.pos_sim.max()), float(b.pos_sim.max()), abs_tol=1e-5)


@pytest.mark.parametrize("use_ids", [False, True])
def test_exact_topk_on_many_ties_matches_python_sort(use_ids: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    values = torch.randint(0, 4, (16, 30), generator=generator).float()  # heavy ties
    values[0] = 2.0  # a row that is one big tie
    ids = torch.stack([torch.randperm(30, generator=generator) for _ in range(16)]) if use_ids else None
    for k in (1, 5, 30):
        top, cols = exact_topk(values, k, ids=ids)
        for b in range(16):
            key = ids[b].tolist() if use_ids else list(range(30))
            expected = sorted(range(30), key=lambda c: (-values[b, c].item(), key[c]))[:k]
            assert cols[b].tolist() == expected
            assert top[b].tolist() == values[b, expected].tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_bank_on_cpu_is_multiplied_in_float32_blocks(dtype: torch.dtype, monkeypatch) -> None:
    """The CPU path for a half bank (upcast per block, float32 matmul) gives the exact product of the
    stored values, across block boundaries; retrieval on it matches the float64 reference."""
    from ickd_plugin import retrieval

    monkeypatch.setattr(retrieval, "CPU_UPCAST_BLOCK_ROWS", 7)  # 40 rows: 5 full blocks and a partial one
    generator = torch.Generator().manual_seed(3)
    bank = torch.randn(40, 16, generator=generator).to(dtype)
    q = torch.randn(5, 16, generator=generator)
    product = retrieval.similarity_product(q, bank)
    assert product.dtype == torch.float32 and product.shape == (5, 40)
    # products of half values are exact in float32; the 16-term sums round, in any order, within:
    atol = sum_atol((q.double().abs() @ bank.double().abs().t()).max().item(), n_terms=16)
    assert torch.allclose(product.double(), q.double() @ bank.double().t(), rtol=0.0, atol=atol)

    half = MemoryBank(dtype)
    labels = torch.arange(40) % 4
    half.fill(bank, labels, torch.arange(40), 4, "cpu")
    queries = half.features[:3].float()
    got = run(half, queries, labels[:3], torch.arange(3), k=3, n=4)
    for b in range(3):
        positives, negatives, _ = reference(half, queries[b], int(labels[b]), b, 3, 4)
        assert got.pos_rows[b].tolist() == positives and got.neg_rows[b].tolist() == negatives


def test_exact_topk_rejects_k_outside_the_columns() -> None:
    values = torch.tensor([[3.0, 1.0, 2.0]])
    for k in (0, 4):
        with pytest.raises(ValueError, match=f"k = {k}, expected 1 <= k <= 3"):
            exact_topk(values, k)
    top, columns = exact_topk(values, 3)  # k = all columns: no (k+1)-th value to compare with
    assert top.tolist() == [[3.0, 2.0, 1.0]] and columns.tolist() == [[0, 2, 1]]


# -- a half bank is compared in float32 on every device (issue 12 §3.4) -------------------------
def _close_neighbours_bank() -> tuple[MemoryBank, torch.Tensor]:
    """Class-1 rows [2000, j] (exact in float16) whose cosines to the query rise by ~4e-4 per j,
    ~4000x float32's rounding, while their dot products (~1200 + 0.8 j) are closer than float16's
    spacing there (1.0): rounding the product to float16 ties or reorders neighbours."""
    rows = [[2000.0, float(j)] for j in range(20)] + [[-5.0, 7.0], [3.0, -2.0], [1.0, 1.0]]
    labels = [1] * 20 + [0, 0, 0]
    bank = MemoryBank(torch.float16)
    bank.fill(torch.tensor(rows), torch.tensor(labels), torch.arange(len(rows)), 2, "cpu")
    return bank, torch.tensor([[0.6, 0.8]])


def test_half_bank_retrieval_is_the_same_on_the_cpu_and_the_cuda_path(monkeypatch) -> None:
    from ickd_plugin import retrieval

    bank, query = _close_neighbours_bank()
    _, expected_neg, _ = reference(bank, query[0], 0, -1, 1, 6)
    cpu = run(bank, query, torch.tensor([0]), torch.tensor([-1]), 1, 6)
    assert cpu.neg_rows[0].tolist() == expected_neg == [19, 18, 17, 16, 15, 14]
    # The CUDA branch multiplies the float16 operands with float32 accumulation and output
    # (torch.mm's out_dtype, CUDA only); emulated here with exact products summed in float64.
    calls = []

    def cuda_like(q: torch.Tensor, half_bank: torch.Tensor) -> torch.Tensor:
        calls.append(half_bank.dtype)
        return torch.mm(q.to(half_bank.dtype).double(), half_bank.double().t()).float()

    monkeypatch.setattr(retrieval, "native_half_product", cuda_like)
    device_path = run(bank, query, torch.tensor([0]), torch.tensor([-1]), 1, 6)
    assert calls == [torch.float16]
    assert device_path.neg_rows[0].tolist() == expected_neg
    assert torch.allclose(device_path.neg_sim, cpu.neg_sim, rtol=1e-6, atol=0)
    # what the old CUDA branch did, (q16 @ bank16.T).float(), reorders these neighbours
    q16 = torch.nn.functional.normalize(query, dim=1).half()
    rounded = (q16 @ bank.features.t()).float() * bank.inv_norms
    assert rounded[0, :20].topk(6).indices.tolist() != expected_neg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_bank_retrieval_on_cuda_matches_the_cpu(dtype: torch.dtype) -> None:
    """The real CUDA branch (torch.mm with out_dtype float32) on neighbours ~4e-4 apart."""
    source, query = _close_neighbours_bank()
    bank = MemoryBank(dtype)
    bank.fill(source.features.float(), source.labels, torch.arange(source.num_rows), 2, "cpu")
    _, expected_neg, _ = reference(bank, query[0], 0, -1, 1, 6)
    cpu = run(bank, query, torch.tensor([0]), torch.tensor([-1]), 1, 6)
    bank.to("cuda")
    gpu = run(bank, query.cuda(), torch.tensor([0], device="cuda"), torch.tensor([-1], device="cuda"), 1, 6)
    assert cpu.neg_rows[0].tolist() == gpu.neg_rows[0].tolist() == expected_neg
    assert torch.allclose(gpu.neg_sim.cpu(), cpu.neg_sim, rtol=1e-6, atol=0)
