"""Ground truth for the scan: planted border detectors, nulls, brute-force statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pan_utils import ScanError, bundled_images, decide_pans, find_pans, random_init, scan
from pan_utils.engine import kernels
from pan_utils.engine.geometry import REGIONS
from pan_utils.engine.padding import discover
from pan_utils.engine.devices import resolve_device

N_PLAIN = 5  # channels with no border preference


def planted_net(padding_mode: str = "zeros", padding: int = 1) -> nn.Sequential:
    """3x3 conv on images in [0, 1]: channel 0 fires on the top border, channel 1 is
    silenced on the left border, channel 2 fires on the whole frame; the rest copy the
    input's centre pixel and so see no padding at all."""
    conv = nn.Conv2d(3, 3 + N_PLAIN, 3, padding=padding, padding_mode=padding_mode, bias=False)
    w = torch.zeros_like(conv.weight)
    w[0, :, 0, :] = -1.0 / 9  # top row minus middle row: ~0 inside, +x under a zero top pad
    w[0, :, 1, :] = 1.0 / 9
    w[1, :, :, 0] = 1.0 / 9  # left column minus middle column: -x under a zero left pad
    w[1, :, :, 1] = -1.0 / 9
    w[2, :, :, :] = -1.0 / 24  # Laplacian: ~0 inside, positive wherever taps read the pad
    w[2, :, 1, 1] = 8.0 / 24
    for c in range(N_PLAIN):
        w[3 + c, c % 3, 1, 1] = 1.0
    with torch.no_grad():
        conv.weight.copy_(w)
    return nn.Sequential(conv).eval()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Photo crops in [0, 1], each also upside down: photos are brighter on top (sky), a
    content bias that the circular null would otherwise rightly refuse to credit to
    padding for a vertical-gradient detector."""
    x = bundled_images(24, 64, seed=1, mean=(0, 0, 0), std=(1, 1, 1))
    return torch.cat([x, x.flip(-2)])


def test_planted_detectors_found_with_sides_and_polarity(photos):
    pans = find_pans(planted_net(), photos, progress=False)
    found = {int(r.channel): (r.sides, r.polarity) for r in pans.itertuples()}
    assert found == {0: ("T", "+"), 1: ("L", "-"), 2: ("TBLR", "+")}
    assert set(pans["type"]) == {"single side", "full frame"}
    assert (pans["score"] >= 3.0).all()


def test_batchnorm_sign_is_folded_into_polarity(photos):
    net = planted_net()
    bn = nn.BatchNorm2d(3 + N_PLAIN).eval()
    with torch.no_grad():
        bn.weight[0] = -2.0  # the top detector is silenced at the border after this BN
    net.append(bn)
    pans = find_pans(net, photos, progress=False).set_index("channel")
    assert pans.loc[0, "polarity"] == "-" and pans.loc[0, "d_top"] < -3
    assert pans.loc[1, "polarity"] == "-"


@pytest.mark.parametrize("mode", ["circular"])
def test_circular_padding_yields_no_pans(photos, mode):
    assert find_pans(planted_net(padding_mode=mode), photos, progress=False).empty


def test_circular_null_rejects_what_circular_also_sees(photos):
    scores = scan(planted_net(), photos, null=True, progress=False)
    null = scores[scores["mode"] == "circular"]
    assert (null.loc[null["applicable"], "d"].abs() < 3).all()
    # Deciding on the circular rows alone (what the null would call PANs) finds none.
    assert decide_pans(scores, mode="circular", null_mode=None).empty


def test_no_padding_means_no_candidates(photos):
    with pytest.raises(ScanError, match="no padded convolution"):
        find_pans(planted_net(padding=0), photos, progress=False)


def test_random_init_is_a_fresh_copy():
    net = planted_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = random_init(net, seed=3)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not torch.equal(fresh[0].weight, net[0].weight)
    assert torch.equal(random_init(net, seed=3)[0].weight, fresh[0].weight)


def test_auto_device_is_cuda_only_when_cuda_is_available(monkeypatch):
    for available, want in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        assert resolve_device("auto") == want
        assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"


# ----------------------------------------------------------------- brute force


def _brute_regions(pads, k, s, d, in_hw, out_hw) -> np.ndarray:
    """Region label per output position from each window's input rows/columns."""
    (t, b, l, r), (h, w), (ho, wo) = pads, in_hw, out_hw
    rows = np.array(["top" if i * s[0] - t < 0 else
                     "bottom" if i * s[0] - t + (k[0] - 1) * d[0] > h - 1 else "mid"
                     for i in range(ho)])
    cols = np.array(["left" if j * s[1] - l < 0 else
                     "right" if j * s[1] - l + (k[1] - 1) * d[1] > w - 1 else "mid"
                     for j in range(wo)])
    name = {("top", "mid"): "T", ("bottom", "mid"): "B", ("mid", "left"): "L",
            ("mid", "right"): "R", ("top", "left"): "TL", ("top", "right"): "TR",
            ("bottom", "left"): "BL", ("bottom", "right"): "BR", ("mid", "mid"): "I"}
    return np.array([[name[(rr, cc)] for cc in cols] for rr in rows])


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 6, 5, padding=(3, 2), dilation=(2, 1), groups=2)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


class KernelSpy:
    """Records the compiled kernel's calls; ``force_torch()`` makes every map take the
    PyTorch path instead."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[int, ...]] = []
        self._monkeypatch = monkeypatch
        real = kernels.accumulate_border_stats

        def spy(y, *args):
            self.calls.append(tuple(y.shape))
            return real(y, *args)

        monkeypatch.setattr(kernels, "accumulate_border_stats", spy)

    def force_torch(self) -> None:
        self._monkeypatch.setattr(kernels, "applies_to", lambda y: False)


@pytest.fixture
def kernel_spy(monkeypatch) -> KernelSpy:
    return KernelSpy(monkeypatch)


# The compiled kernel reads channels-last float32 CPU maps; the PyTorch path reads the
# rest (GPU, NCHW, half precision). Both must equal a brute force over stored maps.
PATHS = {"kernel": (True, True), "torch, channels-last": (True, False),
         "torch, NCHW": (False, False)}


@pytest.mark.parametrize("path", list(PATHS))
def test_streaming_statistics_equal_brute_force(path, kernel_spy):
    channels_last, use_kernel = PATHS[path]
    if not use_kernel:
        kernel_spy.force_torch()
    torch.manual_seed(0)
    net = TwoConvs().eval()
    with torch.no_grad():
        net.bn.weight.copy_(torch.tensor([1.0, -1.0, 0.5, -0.3]))
        net.bn.running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(20, 3, 30, 27) + torch.linspace(0, 1, 27)  # a horizontal gradient
    stored = {}
    hooks = [getattr(net, n).register_forward_hook(
        lambda m, i, o, n=n: stored.setdefault(n, []).append(o.detach().double()))
        for n in ("a", "b")]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    scores = scan(net, x, batch_size=7, progress=False,  # uneven batches on purpose
                  channels_last=channels_last)
    assert bool(kernel_spy.calls) == use_kernel  # the path under test is the one that ran
    sites = {s.name: s for s in discover(net, (30, 27))}
    for name, sign in (("a", torch.tensor([1.0, -1.0, 1.0, -1.0])), ("b", torch.ones(6))):
        y = torch.cat(stored[name]).numpy()
        site = sites[name]
        regions = _brute_regions(site.pads, site.kernel, site.stride, site.dilation,
                                 site.in_hw, y.shape[-2:])
        inner = y[:, :, regions == "I"]
        sigma = inner.transpose(1, 0, 2).reshape(y.shape[1], -1).std(axis=1)
        for region in REGIONS:
            got = scores[(scores["layer"] == name) & (scores["side"] == region)]
            got = got.sort_values("channel")
            mask = regions == region
            if not mask.any():
                assert not got["applicable"].any() and got["d"].isna().all()
                continue
            t = y[:, :, mask].mean(-1) - inner.mean(-1)  # N, C
            mean_t = t.mean(0)
            want_d = mean_t / sigma * sign.numpy()
            want_c = np.where(mean_t > 0, (t > 0).mean(0), (t < 0).mean(0))
            np.testing.assert_allclose(got["d"].to_numpy(), want_d, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got["consistency"].to_numpy(), want_c)
            np.testing.assert_allclose(got["sigma_interior"].to_numpy(), sigma, rtol=1e-4)
            assert (got["band_positions"] == mask.sum()).all()


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_statistics_keep_precision_on_a_large_offset(path, kernel_spy):
    """A channel with mean 1000 and spread 1: E[y^2] - E[y]^2 cancels 6 digits, which float32
    running sums cannot afford (sigma was 25% off); both paths accumulate in float64."""
    if path == "torch":
        kernel_spy.force_torch()
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.bias.fill_(1000.0)
    torch.manual_seed(0)
    x = torch.randn(64, 1, 48, 48)
    scores = scan(nn.Sequential(conv).eval(), x, progress=False)
    assert bool(kernel_spy.calls) == (path == "kernel")
    want = (x[:, 0, 1:-1, 1:-1].double() + 1000.0).std(unbiased=False).item()
    np.testing.assert_allclose(scores["sigma_interior"].to_numpy(), want, rtol=1e-6)


def test_stride_two_even_input_has_no_bottom_band():
    net = nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1)).eval()
    scores = scan(net, torch.randn(4, 3, 32, 32), progress=False)
    applicable = scores.groupby("side")["applicable"].all()
    assert applicable["T"] and applicable["L"]
    assert not applicable["B"] and not applicable["R"] and not applicable["BR"]
    assert scores.loc[scores["side"] == "B", "d"].isna().all()
    odd = scan(net, torch.randn(4, 3, 33, 33), progress=False)
    assert odd.groupby("side")["applicable"].all()["B"]


def test_scan_memory_does_not_keep_feature_maps():
    """Accumulators hold per-channel sums only: the same sizes for 4 or 40 images."""
    import importlib

    scan_mod = importlib.import_module("pan_utils.engine.scan")  # the module, not the function
    net = TwoConvs().eval()
    sizes = []
    for n in (4, 40):
        captured = []
        orig = scan_mod._Accumulator.table

        def spy(self, mode, captured=captured, orig=orig):
            captured.append(sum(v.numel() for v in vars(self).values()
                                if isinstance(v, torch.Tensor)))
            return orig(self, mode)

        scan_mod._Accumulator.table = spy
        try:
            scan(net, torch.randn(n, 3, 24, 24), progress=False)
        finally:
            scan_mod._Accumulator.table = orig
        sizes.append(captured)
    assert sizes[0] == sizes[1]


def test_scan_leaves_no_hooks_and_restores_mode_even_on_error():
    net = TwoConvs().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.randn(2, 3, 24, 24), torch.randn(2, 3, 20, 20)]  # size change: error
    with pytest.raises(ScanError, match="same size"):
        scan(net, batches, null=True, progress=False)
    assert net.training
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert isinstance(scan(net, batches[:1], progress=False), pd.DataFrame)
