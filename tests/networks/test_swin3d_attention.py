"""Window attention of the 3D Swin-Unet: SDPA vs the naive oracle, shift locality, relative index, eval cache."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.networks.swin3d import LocalGlobalAttention3D, SwinAttention3D, WindowAttention3D
from pipeline.networks.swin3d.windows import (
    num_relative_positions,
    relative_position_index,
    shift_attention_mask,
    shift_region_ids,
    window_partition,
    window_reverse,
)


def _pair(cls, *args, **kwargs):
    """The same module twice (sdpa, naive) with identical float64 weights."""
    torch.manual_seed(0)
    fast = cls(*args, attn_impl="sdpa", **kwargs).double()
    slow = cls(*args, attn_impl="naive", **kwargs).double()
    with torch.no_grad():  # a non-trivial bias table
        for p in fast.parameters():
            p.normal_(0, 0.5)
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def _assert_same_values_and_grads(fast, slow, x):
    xf, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yf, ys = fast(xf), slow(xs)
    torch.testing.assert_close(yf, ys, rtol=0, atol=1e-10)
    w = torch.randn_like(yf)
    (yf * w).sum().backward()
    (ys * w).sum().backward()
    torch.testing.assert_close(xf.grad, xs.grad, rtol=0, atol=1e-10)
    for (name, pf), (_, ps) in zip(fast.named_parameters(), slow.named_parameters()):
        assert pf.grad is not None and pf.grad.abs().sum() > 0, name
        torch.testing.assert_close(pf.grad, ps.grad, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize(
    "grid, window, shift, batch",
    [
        ((8, 8, 8), (4, 4, 4), (0, 0, 0), 1),  # W-MSA
        ((8, 8, 8), (4, 4, 4), (2, 2, 2), 1),  # SW-MSA
        ((8, 8, 4), (4, 4, 2), (2, 2, 1), 2),  # SW-MSA, anisotropic, batch of 2
        ((8, 8, 4), (4, 4, 4), (2, 2, 2), 2),  # partly clamped: z window = grid, z shift 0
        ((4, 4, 2), (4, 4, 4), (2, 2, 2), 2),  # fully clamped stage: global attention, no shift
    ],
)
def test_sdpa_equals_naive_oracle(grid, window, shift, batch):
    fast, slow = _pair(SwinAttention3D, 16, 2, grid, window, shift)
    x = torch.randn(batch, *grid, 16, dtype=torch.float64)
    _assert_same_values_and_grads(fast, slow, x)


@pytest.mark.parametrize("mode, share", [("sum", True), ("sum", False), ("head_split", True)])
@pytest.mark.parametrize("shifted", [False, True])
def test_lgt_sdpa_equals_naive(mode, share, shifted):
    fast, slow = _pair(LocalGlobalAttention3D, 16, 2, (8, 8, 4), ((4, 4, 4), (2, 2, 2)), shifted, share, mode)
    assert len(fast.paths) == 2
    if shifted:
        assert fast.paths[0].shift_size == (2, 2, 0) and fast.paths[1].shift_size == (1, 1, 1)
    _assert_same_values_and_grads(fast, slow, torch.randn(2, 8, 8, 4, 16, dtype=torch.float64))


def test_lgt_sum_is_sum_of_two_window_attentions():
    torch.manual_seed(1)
    lgt = LocalGlobalAttention3D(16, 2, (8, 8, 8), (8, 4), shifted=True).eval()
    x = torch.randn(1, 8, 8, 8, 16)
    qkv = lgt.qkv(x)
    expected = lgt.proj(lgt.paths[0](qkv) + lgt.paths[1](qkv))
    torch.testing.assert_close(lgt(x), expected)
    # rolling qkv (inside the paths) is exact: a per-token projection commutes with rolling
    rolled = torch.roll(x, (4, 4, 4), (1, 2, 3))
    torch.testing.assert_close(torch.roll(lgt.qkv(x), (4, 4, 4), (1, 2, 3)), lgt.qkv(rolled))


def test_lgt_collapses_to_one_path_when_windows_clamp_to_the_grid():
    lgt = LocalGlobalAttention3D(16, 2, (2, 2, 2), (4, 2))
    assert len(lgt.paths) == 1 and lgt.paths[0].window_size == (2, 2, 2)


def _changed(module, grid, pos, dim=8):
    torch.manual_seed(0)
    x = torch.randn(1, *grid, dim, dtype=torch.float64)
    x2 = x.clone()
    x2[(0, *pos)] += 1.0
    with torch.no_grad():
        diff = (module(x2) - module(x)).abs().amax(-1)[0]
    return diff > 1e-9


@pytest.mark.parametrize("impl", ["sdpa", "naive"])
@pytest.mark.parametrize(
    "grid, window, pos",
    [
        ((8, 8, 8), (4, 4, 4), (0, 0, 0)),
        ((8, 8, 8), (4, 4, 4), (7, 1, 6)),
        ((8, 8, 8), (4, 4, 4), (5, 6, 2)),
        ((8, 8, 8), (4, 4, 4), (3, 3, 3)),
        ((8, 12, 4), (4, 4, 2), (1, 1, 1)),
        ((8, 12, 4), (4, 4, 2), (2, 6, 3)),
    ],
)
def test_shifted_window_locality(impl, grid, window, pos):
    shift = tuple(w // 2 for w in window)
    attn = SwinAttention3D(8, 2, grid, window, shift, attn_impl=impl).double()
    changed = _changed(attn, grid, pos)
    regions = shift_region_ids(grid, window, shift)
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1)
    rolled = (coords - torch.tensor(shift)) % torch.tensor(grid)  # position of every token in the rolled grid
    win = rolled // torch.tensor(window)
    reg = regions[rolled[..., 0], rolled[..., 1], rolled[..., 2]]
    p = torch.tensor(pos)
    expected = (win == win[tuple(p)]).all(-1) & (reg == reg[tuple(p)])
    assert torch.equal(changed, expected)
    assert 1 <= int(expected.sum()) <= 64


def test_unshifted_window_locality():
    attn = SwinAttention3D(8, 2, (8, 8, 8), (4, 4, 4), 0).double()
    changed = _changed(attn, (8, 8, 8), (5, 2, 7))
    expected = torch.zeros(8, 8, 8, dtype=torch.bool)
    expected[4:8, 0:4, 4:8] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("window", [(2, 2, 2), (4, 4, 4), (7, 7, 7), (4, 8, 2), (3, 5, 5)])
def test_relative_index_covers_all_offsets(window):
    idx = relative_position_index(window)
    n = window[0] * window[1] * window[2]
    assert idx.shape == (n, n)
    expected = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    assert idx.unique().numel() == num_relative_positions(window) == expected
    assert int(idx.min()) == 0 and int(idx.max()) == num_relative_positions(window) - 1
    # same offset -> same row, different offset -> different row
    coords = torch.tensor(list(itertools.product(*(range(w) for w in window))))
    offsets = coords[:, None] - coords[None]
    keys = {}
    for i, j in [(0, n - 1), (n - 1, 0), (1, 2), (n // 2, n // 3), (3 % n, (n - 2) % n)]:
        keys.setdefault(tuple(offsets[i, j].tolist()), set()).add(int(idx[i, j]))
    assert all(len(v) == 1 for v in keys.values())
    flat = {}
    for i in range(n):
        for j in range(n):
            flat.setdefault(int(idx[i, j]), set()).add(tuple(offsets[i, j].tolist()))
    assert all(len(v) == 1 for v in flat.values())


def test_lgt_paths_have_their_own_complete_index():
    lgt = LocalGlobalAttention3D(16, 2, (8, 8, 8), (8, 4))
    for path, w in zip(lgt.paths, (8, 4)):
        assert path.relative_position_index.unique().numel() == (2 * w - 1) ** 3
        assert path.relative_position_bias_table.shape == ((2 * w - 1) ** 3, 2)


def test_partition_roundtrip_and_shift_mask():
    x = torch.randn(2, 8, 4, 6, 3)
    w = window_partition(x, (4, 2, 3))
    assert w.shape == (2 * 2 * 2 * 2, 24, 3)
    assert torch.equal(window_reverse(w, (4, 2, 3), (2, 8, 4, 6)), x)
    assert shift_attention_mask((8, 8, 8), (4, 4, 4), (0, 0, 0)) is None
    mask = shift_attention_mask((8, 8, 8), (4, 4, 4), (2, 2, 2))
    assert mask.shape == (8, 64, 64)
    assert int(shift_region_ids((8, 8, 8), (4, 4, 4), (2, 2, 2)).unique().numel()) == 27
    assert (mask[0] == 0).all()  # the first window never straddles the cyclic seam
    assert (mask[-1] != 0).any()


def test_eval_cache_matches_and_follows_weight_changes():
    torch.manual_seed(0)
    attn = SwinAttention3D(8, 2, (8, 8, 8), 4, 2)
    x = torch.randn(2, 8, 8, 8, 8)
    ref = attn(x).detach()
    attn.eval()
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref)
        assert len(attn.attn._cache) == 1
        cached = next(iter(attn.attn._cache.values()))
        torch.testing.assert_close(attn(x), ref)
        assert next(iter(attn.attn._cache.values())) is cached  # reused
        state = attn.state_dict()
        table = state["attn.relative_position_bias_table"]
        state["attn.relative_position_bias_table"] = table + torch.randn_like(table)
        attn.load_state_dict(state)
        changed = attn(x)
    assert not torch.allclose(changed, ref)
    attn.train()
    assert not attn.attn._cache
    torch.testing.assert_close(attn(x).detach(), changed)


def test_window_attention_rejects_bad_config_and_input():
    with pytest.raises(ValueError, match="does not tile"):
        WindowAttention3D(2, 4, (12, 12, 12), (8, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        SwinAttention3D(10, 3, (8, 8, 8), 4)
    with pytest.raises(ValueError, match="attn_impl"):
        WindowAttention3D(2, 4, (8, 8, 8), 4, attn_impl="flash")
    core = WindowAttention3D(2, 4, (8, 8, 8), 4)
    with pytest.raises(ValueError, match="expected qkv"):
        core(torch.randn(1, 4, 8, 8, 24))
