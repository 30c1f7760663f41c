"""Deterministic mode (core.determinism): segment sums and row gathers that repeat bit for bit
whatever the thread count or the order of the rows, and seeded graph trainings that repeat.

Before, the graph refiner gathered node features per edge with ``x[index]``, whose backward adds
repeated rows with CPU atomics split across threads: two seeded runs with 2 threads drifted apart.
"""
import json

import pytest
import torch

from core.determinism import deterministic, gather_rows, index_sum, is_deterministic, set_deterministic


@pytest.fixture
def det_mode():
    """Deterministic mode for one test; the previous state comes back after."""
    with deterministic(True):
        yield


@pytest.fixture
def threads():
    """``threads(n)`` sets torch's thread count; the previous count comes back after the test."""
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


def _index_add(values, index, size):
    return values.new_zeros((size, *values.shape[1:])).index_add_(0, index, values)


def _order_sensitive_work(m=4096, size=7, cols=16, seed=0):
    """Rows of very different magnitudes into few segments: any change of summation order
    changes the rounding (the tests check that it does)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(size, (m,), generator=g)
    values = torch.randn(m, cols, generator=g) * 10.0 ** torch.randint(-4, 5, (m, 1), generator=g).float()
    return values, index, size


def test_set_deterministic_switches_torch_and_the_context_restores():
    before = is_deterministic()
    with deterministic(True):
        assert is_deterministic() and torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a GPU op without a kernel warns
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        with deterministic(False):
            assert not is_deterministic()
        assert is_deterministic()
        set_deterministic(False)  # a run inside the block switches it; the block still restores
        assert not is_deterministic()
    assert is_deterministic() == before


@pytest.mark.parametrize("shape,dtype", [((300,), torch.float32), ((300, 5), torch.float32),
                                         ((300, 2, 3), torch.float64), ((300, 4), torch.int64)])
def test_index_sum_equals_index_add(shape, dtype):
    g = torch.Generator().manual_seed(1)
    values = (torch.randn(shape, generator=g) * 100).to(dtype)
    index = torch.randint(40, (300,), generator=g)
    out = index_sum(values, index, 45)  # segments 40..44 (and any unused) stay zero
    ref = _index_add(values, index, 45)
    assert out.shape == ref.shape == (45, *shape[1:]) and out.dtype == dtype
    if dtype.is_floating_point:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    else:
        assert torch.equal(out, ref)
    assert not out[40:].any()


def test_index_sum_edge_cases_and_gradient():
    assert torch.equal(index_sum(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 4), torch.zeros(4, 3))
    with pytest.raises(ValueError):
        index_sum(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long), 4)
    with pytest.raises(IndexError):
        index_sum(torch.zeros(2, 3), torch.tensor([0, 4]), 4)
    values = torch.randn(50, 3, requires_grad=True)
    index = torch.randint(6, (50,), generator=torch.Generator().manual_seed(2))
    up = torch.randn(6, 3)
    index_sum(values, index, 6).backward(up)
    assert torch.equal(values.grad, up[index])


def test_index_sum_is_bit_identical_across_threads_and_row_orders(threads):
    values, index, size = _order_sensitive_work()
    threads(1)
    ref = index_sum(values, index, size)
    exact, scale = _index_add(values.double(), index, size), _index_add(values.abs().double(), index, size)
    for out in (ref, _index_add(values, index, size)):  # both within float32 rounding of the sum
        assert ((out.double() - exact).abs() <= 1e-6 * scale).all()
    threads(2)
    assert all(torch.equal(index_sum(values, index, size), ref) for _ in range(3))
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        perm = torch.randperm(len(index), generator=g)
        # the same work in another order: index_add_'s rounding changes, index_sum's does not
        assert not torch.equal(_index_add(values[perm], index[perm], size), _index_add(values, index, size))
        assert torch.equal(index_sum(values[perm], index[perm], size), ref)
    with deterministic(True):
        assert torch.equal(index_sum(values, index, size), ref)


def _gather_grad(gather, x, index, up):
    x = x.detach().clone().requires_grad_(True)
    gather(x, index).backward(up)
    return x.grad


def test_gather_rows_backward_repeats_bit_for_bit(det_mode, threads):
    """Many rows gathered from few (x[index] with CPU atomics: a different sum nearly every time)."""
    values, index, size = _order_sensitive_work(m=4096, size=7, cols=16, seed=4)
    x = torch.randn(size, 16)
    threads(1)
    ref = _gather_grad(gather_rows, x, index, values)
    exact, scale = _index_add(values.double(), index, size), _index_add(values.abs().double(), index, size)
    assert ((ref.double() - exact).abs() <= 1e-6 * scale).all()
    assert torch.equal(gather_rows(x, index), x[index])
    threads(2)
    for _ in range(5):
        assert torch.equal(_gather_grad(gather_rows, x, index, values), ref)
    with deterministic(False):  # plain index_select: its backward (index_add_) is serial on the CPU
        plain = _gather_grad(gather_rows, x, index, values)
        assert all(torch.equal(_gather_grad(gather_rows, x, index, values), plain) for _ in range(3))


# A planar source: nodes of degree 3-6, so most batches have a node whose coarse edges sit on
# both sides of the thread split; d_model 64 so that the gathers are large enough to be split;
# a triangle layer in the edge head (more gathers). On the old refiner (x[index] gathers, torch's
# deterministic mode off) two such runs differed in each of 3 tries.
SMALL = ["domain=graph", "progress=false", "task=train", "domain.source=planar", "domain.n_train=8",
         "domain.n_val=2", "domain.n_test=2", "domain.model.d_model=64", "domain.model.layers=1",
         "domain.model.heads=2", "domain.model.edge_layers=1", "train.batch_size=4", "train.steps=5",
         "train.log_every=1", "train.warmup=2"]


def test_seeded_graph_trainings_repeat_bit_for_bit(det_mode, threads, tmp_path):
    from core.run import compose_config, run

    threads(2)
    for name in ("a", "b"):
        run(compose_config(SMALL), tmp_path / name)  # deterministic: true, the default
        set_deterministic(True)  # as the fixture had it (a run sets the mode from its config)
    logs = [[json.loads(line) for line in (tmp_path / n / "train_log.jsonl").read_text().splitlines()]
            for n in ("a", "b")]
    assert len(logs[0]) == 5 and [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.pt", weights_only=True)["model"] for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
