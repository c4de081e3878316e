"""Sliding-window engine: equality with MONAI, streaming, window skipping and mirroring TTA equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from pipeline.inference import MirrorTTA, SlidingWindowEngine, channel_argmax, mirror_flips, plan_windows


def tiny_net(out_channels: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, out_channels, 3, padding=1)).eval()


GEOMETRIES = [
    # image size, roi, overlap, mode, sw_batch_size
    ((40, 33, 20), (16, 16, 16), 0.5, "gaussian", 1),
    ((10, 33, 50), (16, 16, 16), 0.25, "constant", 3),  # first axis smaller than the window: padding
    ((17, 20, 21), (8, 12, 8), (0.5, 0.25, 0.6), "gaussian", 2),
]


@pytest.mark.parametrize("shape,roi,overlap,mode,bs", GEOMETRIES)
def test_blended_output_equals_monai(shape, roi, overlap, mode, bs):
    net = tiny_net()
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = sliding_window_inference(x, roi, bs, net, overlap=overlap, mode=mode)
        engine = SlidingWindowEngine(roi, overlap=overlap, mode=mode, sw_batch_size=bs)
        out = engine(x, net)
        again = engine(x, net)  # cached importance and count maps
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
    assert torch.equal(again, ref)
    assert engine.last_stats["skipped"] == 0


@pytest.mark.parametrize("shape,roi,overlap,mode,bs", GEOMETRIES)
@pytest.mark.parametrize("axis,row_bytes", [(None, 0), (0, 0), (1, 0), (2, 0), (None, 2**30), (2, 2**30)])
def test_streaming_labels_equal_straightforward_argmax(shape, roi, overlap, mode, bs, axis, row_bytes):
    net = tiny_net()
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = sliding_window_inference(x, roi, bs, net, overlap=overlap, mode=mode).argmax(1, keepdim=True)
        engine = SlidingWindowEngine(
            roi, overlap=overlap, mode=mode, sw_batch_size=bs, stream_axis=axis, stream_row_bytes=row_bytes
        )
        streamed = engine.predict_labels(x, net, streaming=True)
        plain = engine.predict_labels(x, net, streaming=False)
    assert streamed.dtype == torch.uint8 and streamed.shape == ref.shape
    assert torch.equal(streamed.long(), ref)
    assert torch.equal(plain.long(), ref)


def test_streaming_picks_smallest_slab_and_batches():
    plan = plan_windows((60, 20, 30), (16, 16, 16), 0.5)
    engine = SlidingWindowEngine((16, 16, 16))
    assert engine._choose_axis(plan) == 0  # a 20x30 plane is the smallest
    net = tiny_net(3)
    x = torch.rand(2, 1, 24, 20, 18, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = sliding_window_inference(x, (16, 16, 16), 1, net, overlap=0.5, mode="gaussian").argmax(1, keepdim=True)
        out = SlidingWindowEngine((16, 16, 16), streaming=True).predict_labels(x, net)
    assert torch.equal(out.long(), ref)


def _body_phantom() -> torch.Tensor:
    """CT-like input windowed to 0..1: air (0) around an off-centre body block."""
    g = torch.Generator().manual_seed(4)
    x = torch.zeros(1, 1, 48, 40, 36)
    x[:, :, 6:22, 8:30, 4:20] = 0.2 + 0.8 * torch.rand(1, 1, 16, 22, 16, generator=g)
    return x


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("how", ["threshold", "mask"])
def test_window_skipping_is_identical_on_the_body(streaming, how):
    net = tiny_net(4)
    x = _body_phantom()
    body = x[0, 0] > 0
    full = SlidingWindowEngine((16, 16, 16), overlap=0.5, sw_batch_size=1)
    skip = SlidingWindowEngine(
        (16, 16, 16), overlap=0.5, sw_batch_size=1, skip_below=0.0 if how == "threshold" else None
    )
    kw = {"foreground": body} if how == "mask" else {}
    with torch.no_grad():
        ref_logits = full(x, net)
        ref = full.predict_labels(x, net)
        out = skip.predict_labels(x, net, streaming=streaming, **kw)
        logits = skip(x, net, **kw)
    stats = skip.last_stats
    assert 0 < stats["run"] < stats["windows"], stats  # some windows really were skipped
    assert torch.equal(out[0, 0][body], ref[0, 0][body])  # identical wherever the criterion says "body"
    assert torch.equal(logits[0, :, body], ref_logits[0, :, body])
    # voxels that only skipped windows cover are background
    covered = torch.zeros(x.shape[2:], dtype=torch.bool)
    for w in plan_windows(x.shape[2:], (16, 16, 16), 0.5).slices:
        if body[w].any():
            covered[w] = True
    assert covered.sum() < covered.numel()
    assert (out[0, 0][~covered] == 0).all()
    assert (logits[0].argmax(0)[~covered] == 0).all()
    assert torch.allclose(torch.softmax(logits[0], 0)[0][~covered], torch.ones(1))


def test_all_windows_skipped_gives_background():
    net = tiny_net(3)
    x = torch.zeros(1, 1, 20, 20, 20)
    engine = SlidingWindowEngine((16, 16, 16), skip_below=0.0)
    with torch.no_grad():
        assert engine.predict_labels(x, net, streaming=True).max() == 0
        assert engine.predict_labels(x, net, streaming=False).max() == 0
        assert engine(x, net).argmax(1).max() == 0
    assert engine.last_stats["run"] == 0


def test_mirror_tta_logits_mode_equals_averaging_flipped_runs():
    # 40 = 16 + 3 * 8: the window grid is symmetric under every flip, so logit TTA on windows == on the volume
    net = tiny_net(3)
    x = torch.rand(1, 1, 40, 24, 32, generator=torch.Generator().manual_seed(5))
    engine = SlidingWindowEngine((16, 16, 16), overlap=0.5)
    with torch.no_grad():
        tta = engine(x, MirrorTTA(net, average="logits"))
        manual = sum(torch.flip(engine(torch.flip(x, f), net), f) if f else engine(x, net) for f in mirror_flips(3)) / 8
        batched = engine(x, MirrorTTA(net, batch_flips=True, average="logits"))
        plain = engine(x, net)
    assert torch.allclose(tta, manual, atol=1e-5)
    assert torch.allclose(batched, tta, atol=1e-5)
    assert not torch.allclose(tta, plain, atol=1e-3)  # the net is not flip-invariant: TTA changes the result
    assert len(mirror_flips(3)) == 8 and mirror_flips(3)[0] == ()
    assert mirror_flips(3, axes=(0, 2)) == [(), (2,), (4,), (2, 4)]


def test_mirror_tta_averages_softmax_probabilities_like_nnunet_v1():
    """The default averages probabilities: softmax(TTA output) is the mean of the flips' softmax, not softmax(mean)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 3, 3, padding=1)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(6.0)  # confident, flip-dependent logits: the two averages then disagree
        x = torch.rand(2, 1, 10, 12, 14, generator=torch.Generator().manual_seed(1))
        flips = mirror_flips(3)
        runs = [torch.flip(net(torch.flip(x, f)), f) if f else net(x) for f in flips]
        mean_prob = torch.stack([r.softmax(1) for r in runs]).mean(0)
        mean_logit = torch.stack(runs).mean(0)
        for batch_flips in (False, True):
            out = MirrorTTA(net, batch_flips=batch_flips)(x)
            assert torch.allclose(out.softmax(1), mean_prob, atol=1e-5)
            assert torch.allclose(out.exp().sum(1), torch.ones(2, 10, 12, 14), atol=1e-5)  # log-probabilities
        logit_tta = MirrorTTA(net, average="logits")(x)
        assert torch.allclose(logit_tta, mean_logit, atol=1e-5)
        # averaging logits would be caught: the label maps differ on a visible fraction of voxels
        differ = (mean_prob.argmax(1) != mean_logit.argmax(1)).float().mean().item()
        assert differ > 0.005, differ
        assert torch.equal(MirrorTTA(net)(x).argmax(1), mean_prob.argmax(1))
        # through the engine (one window = the whole input), the pipeline's softmax gives the mean probabilities
        engine = SlidingWindowEngine((10, 12, 14), overlap=0.0, mode="constant")
        assert torch.allclose(engine(x[:1], MirrorTTA(net)).softmax(1), mean_prob[:1], atol=1e-5)
    with pytest.raises(ValueError, match="average"):
        MirrorTTA(net, average="median")


def test_mirror_tta_of_flip_equivariant_net_is_identity():
    x = torch.rand(2, 1, 6, 7, 8)
    net = nn.Conv3d(1, 3, 1, bias=True)  # a 1x1 conv commutes with flips
    with torch.no_grad():
        assert torch.allclose(MirrorTTA(net)(x), net(x).log_softmax(1), atol=1e-5)
        assert torch.allclose(MirrorTTA(net, average="logits")(x), net(x), atol=1e-6)


def test_channel_argmax_matches_torch_including_ties():
    x = torch.randint(0, 3, (1, 6, 5, 4, 3)).float()  # many ties
    assert torch.equal(channel_argmax(x, dim=1).long(), x.argmax(1, keepdim=True))
    assert channel_argmax(torch.rand(300, 4), dim=0).dtype == torch.int16


def test_device_split_and_errors():
    net = tiny_net(2)
    x = torch.rand(1, 1, 20, 18, 16)
    engine = SlidingWindowEngine((16, 16, 16), sw_device="cpu", device="cpu")
    with torch.no_grad():
        assert engine(x, net).device.type == "cpu"
    with pytest.raises(ValueError, match="roi_size"):
        SlidingWindowEngine((16, 16))(x, net)
    with pytest.raises(ValueError, match="overlap"):
        plan_windows((20, 20, 20), (16, 16, 16), 1.0)
    with pytest.raises(ValueError, match="predictor returned"):
        SlidingWindowEngine((16, 16, 16))(x, lambda w: w[:, :, :8])


def test_streaming_rows_carry_and_gaps_equal_monai():
    """Many slabs and rows (the carry between slabs is used), a channels-last network, skipped rows, 2-D input."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 6, 1)).eval()
    net = net.to(memory_format=torch.channels_last_3d)

    def cl_net(w):  # predictions with channels innermost: the engine's buffers follow that layout
        return net(w).contiguous(memory_format=torch.channels_last_3d)

    x = torch.rand(1, 1, 45, 38, 21, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = sliding_window_inference(x, (12, 10, 8), 3, net, overlap=0.6, mode="gaussian")
        for axis, row_bytes in ((0, 0), (None, 0), (0, 2**30)):
            engine = SlidingWindowEngine(
                (12, 10, 8), overlap=0.6, sw_batch_size=3, mode="gaussian", stream_axis=axis, stream_row_bytes=row_bytes
            )
            out = engine.predict_labels(x, cl_net, streaming=True)
            assert torch.equal(out.long(), ref.argmax(1, keepdim=True))
            assert torch.equal(engine.predict_labels(x, net, streaming=True), out)
        blended = engine(x, cl_net)  # channels-last accumulator: same values as MONAI's NCDHW buffer
        assert blended.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(blended, ref)
        # two separated bodies: whole slabs and rows in between are skipped, and a body spans several rows
        y = torch.zeros(1, 1, 60, 40, 20)
        y[:, :, 2:14, 3:30] = torch.rand(1, 1, 12, 27, 20, generator=torch.Generator().manual_seed(8)) + 0.1
        y[:, :, 44:58, 30:38, 5:9] = 0.5
        skip = SlidingWindowEngine((10, 10, 10), overlap=0.5, skip_below=0.0, stream_row_bytes=0)
        labels = skip.predict_labels(y, net, streaming=True)
        wide = SlidingWindowEngine((10, 10, 10), overlap=0.5, skip_below=0.0).predict_labels(y, net, streaming=True)
        assert torch.equal(wide, labels)
        plain = skip.predict_labels(y, net, streaming=False)
        assert 0 < skip.last_stats["run"] < skip.last_stats["windows"]
        assert torch.equal(labels, plain)
        body = y[0, 0] > 0
        full = SlidingWindowEngine((10, 10, 10), overlap=0.5).predict_labels(y, net)
        assert torch.equal(labels[0, 0][body], full[0, 0][body])
    net2d = nn.Conv2d(1, 3, 3, padding=1).eval()
    z = torch.rand(1, 1, 30, 17, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref2d = sliding_window_inference(z, (8, 8), 2, net2d, overlap=0.5, mode="gaussian").argmax(1, keepdim=True)
        got2d = SlidingWindowEngine((8, 8), overlap=0.5, sw_batch_size=2, stream_row_bytes=0).predict_labels(
            z, net2d, streaming=True
        )
    assert torch.equal(got2d.long(), ref2d)


class _RecordingBackend:
    """A backend as issue 15 will add one: a plain callable (not an ``nn.Module``) that records what it is given."""

    def __init__(self, net: nn.Module, form: str) -> None:
        self.net, self.form = net, form
        self.calls: list[tuple[tuple[int, ...], torch.dtype, bool]] = []

    def __call__(self, batch: torch.Tensor):
        self.calls.append((tuple(batch.shape), batch.dtype, torch.is_grad_enabled()))
        y = self.net(batch)
        if self.form == "dict":
            return {"logits": y, "z_aux": y[:, :1]}  # the first key in sorted order is used
        if self.form == "list":  # deep supervision: full resolution first, then a half-resolution head
            return [y, y[:, :, ::2, ::2, ::2]]
        return y


@pytest.mark.parametrize("form", ["tensor", "dict", "list"])
def test_backend_callable_gets_window_batches_and_may_return_dict_or_list(form):
    net = tiny_net(4)
    x = torch.rand(1, 1, 30, 21, 17, generator=torch.Generator().manual_seed(10))
    engine = SlidingWindowEngine((16, 16, 16), overlap=0.5, sw_batch_size=3)
    n_windows = len(plan_windows(x.shape[2:], (16, 16, 16), 0.5).slices)  # 3 x 2 x 2 = 12: four calls of 3
    with torch.no_grad():
        ref_logits = engine(x, net)
        ref_labels = engine.predict_labels(x, net)
    for run in ("logits", "plain", "streamed"):
        backend = _RecordingBackend(net, form)
        if run == "logits":
            assert torch.equal(engine(x, backend), ref_logits)  # autograd is on here: the engine turns it off
        else:
            assert torch.equal(engine.predict_labels(x, backend, streaming=run == "streamed"), ref_labels)
        assert len(backend.calls) == -(-n_windows // 3) == 4
        assert all(c == ((3, 1, 16, 16, 16), torch.float32, False) for c in backend.calls), backend.calls
    # every window skipped: one probe call gives the class count, whatever the output form
    backend = _RecordingBackend(net, form)
    logits = SlidingWindowEngine((16, 16, 16), skip_below=1.0)(x, backend)
    assert logits.shape == (1, 4, 30, 21, 17) and (logits.argmax(1) == 0).all()
    assert backend.calls == [((1, 1, 16, 16, 16), torch.float32, False)]
