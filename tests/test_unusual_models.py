"""Models a new user may bring: odd convolutions must scan, or fail with a clear ScanError."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pan_utils import ScanError, bundled_images, find_pans, padded_convs, scan
from pan_utils.engine.probes import iter_batches


def _imgs(n: int = 4, size=48) -> torch.Tensor:
    """Photo crops in [0, 1] (not normalised): zero padding is then darker than any image,
    so a planted detector's border response is unmistakable."""
    return bundled_images(n, size, seed=1, mean=(0, 0, 0), std=(1, 1, 1))


def _frame_detector(conv: nn.Conv2d) -> nn.Conv2d:
    """Channel 0 of ``conv`` becomes a full-frame detector (a Laplacian sees the zero pad)."""
    with torch.no_grad():
        w = conv.weight
        w[0].fill_(-1.0)
        kh, kw = w.shape[-2:]
        w[0, :, kh // 2, kw // 2] = kh * kw - 1
        if conv.bias is not None:
            conv.bias[0] = 0.0
    return conv


def _native(scores):
    return scores[scores["mode"] == "native"]


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)),
    nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 5, stride=2)),
    nn.Sequential(nn.Conv2d(3, 8, 1, padding=1), nn.Conv2d(8, 4, (1, 1), padding=(2, 0))),
], ids=["1x1-only", "no-padding", "1x1-with-padding"])
def test_models_that_cannot_see_the_border_raise_a_clear_scan_error(net):
    with pytest.raises(ScanError, match="no padded convolution with a kernel larger than 1"):
        find_pans(net.eval(), _imgs(2), progress=False)


def test_grouped_depthwise_dilated_and_rectangular_kernels_are_scanned():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU(),  # depthwise
        nn.Conv2d(12, 12, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(12, 12, (1, 5), padding=(0, 2)),  # pads only left/right
        nn.Conv2d(12, 12, 3, stride=2, padding=1, padding_mode="reflect"),
    ).eval()
    dil = _frame_detector(net[6])
    table = padded_convs(net, 48)
    assert list(table["layer"]) == ["0", "2", "4", "6", "8", "9"]
    assert table.set_index("layer").loc["6", ["band_top", "band_left"]].tolist() == [2, 2]
    pans, scores = find_pans(net, _imgs(8), progress=False, return_scores=True)
    native = _native(scores)
    assert set(native["layer"]) == {"0", "2", "4", "6", "8", "9"}
    assert len(native) == 6 * 12 * 8
    # The (1, 5) conv pads no row: its top/bottom bands do not exist.
    rect = native[native["layer"] == "8"].set_index(["channel", "side"])
    assert not rect.loc[(0, "T"), "applicable"] and rect.loc[(0, "L"), "applicable"]
    # The planted detector behind the dilated conv is found on all four sides.
    hit = pans[(pans["layer"] == "6") & (pans["channel"] == 0)]
    assert dil is net[6] and len(hit) == 1 and hit["sides"].item() == "TBLR"


def test_non_square_probes_96x128():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(6, 6, 3, stride=2, padding=1)).eval()
    _frame_detector(net[0])
    x = bundled_images(8, (96, 128), seed=2, mean=(0, 0, 0), std=(1, 1, 1))
    assert x.shape[-2:] == (96, 128)
    table = padded_convs(net, (96, 128)).set_index("layer")
    assert table.loc["2", ["out_h", "out_w"]].tolist() == [48, 64]
    pans, scores = find_pans(net, x, progress=False, return_scores=True)
    assert ((pans["layer"] == "0") & (pans["channel"] == 0)).sum() == 1
    assert _native(scores)["n_images"].eq(8).all()


def test_string_same_padding_including_even_kernels():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding="same"), nn.ReLU(),
                        nn.Conv2d(6, 6, 4, padding="same"), nn.ReLU(),  # asymmetric 1/2
                        nn.Conv2d(6, 6, 3, padding="same", dilation=2)).eval()
    _frame_detector(net[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: even kernel 'same' copies
        table = padded_convs(net, 32).set_index("layer")
        pans = find_pans(net, _imgs(8, 32), progress=False)
    assert table.loc["2", ["pad_top", "pad_bottom", "pad_left", "pad_right"]].tolist() \
        == [1, 2, 1, 2]
    assert (table["padding_kind"] == "same").all()
    assert ((pans["layer"] == "0") & (pans["channel"] == 0)).sum() == 1


def test_timm_conv2d_same_dynamic_padding():
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    net = nn.Sequential(
        timm_layers.create_conv2d(3, 8, 3, stride=2, padding="same"),  # -> Conv2dSame
        nn.ReLU(),
        timm_layers.create_conv2d(8, 8, 3, stride=1, padding="same"),  # static 'same'
        nn.ReLU(),
        timm_layers.create_conv2d(8, 8, 5, stride=2, padding="same"),
    ).eval()
    assert type(net[0]).__name__ == "Conv2dSame"
    table = padded_convs(net, (48, 40)).set_index("layer")
    assert table.loc["0", "padding_kind"] == "dynamic_same"
    # TF-SAME at stride 2 on an even size pads only bottom/right.
    assert table.loc["0", ["pad_top", "pad_bottom", "pad_left", "pad_right"]].tolist() \
        == [0, 1, 0, 1]
    pans, scores = find_pans(net, _imgs(8, (48, 40)), progress=False, return_scores=True)
    first = _native(scores)[_native(scores)["layer"] == "0"].set_index(["channel", "side"])
    assert not first.loc[(0, "T"), "applicable"] and first.loc[(0, "B"), "applicable"]
    assert set(scores["mode"]) == {"native", "circular"}


def test_real_timm_model_with_conv2d_same_discovers_dynamic_padding():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False).eval()
    table = padded_convs(model, 64)
    assert (table["padding_kind"] == "dynamic_same").any()
    assert table["candidate"].all() and len(table) >= 10


class _NeedsBatchOfTwo(nn.Module):
    """Like a model with batch statistics in forward: refuses a batch of one image."""

    def __init__(self):
        super().__init__()
        self.conv = _frame_detector(nn.Conv2d(3, 4, 3, padding=1))

    def forward(self, x):
        if x.shape[0] < 2:
            raise ValueError("Expected more than 1 value per channel when training")
        return self.conv(x)


@pytest.mark.parametrize("n, batch_size", [(9, 4), (9, 2), (17, 8)])
def test_a_lone_last_image_joins_the_previous_batch(n, batch_size):
    sizes = [x.shape[0] for x in iter_batches(torch.zeros(n, 3, 4, 4), batch_size)]
    assert sum(sizes) == n and min(sizes) >= 2
    pans, scores = find_pans(_NeedsBatchOfTwo().eval(), _imgs(n, 24), batch_size=batch_size,
                             progress=False, return_scores=True)
    assert _native(scores)["n_images"].eq(n).all()
    assert (pans["channel"] == 0).sum() == 1


def test_batch_size_one_is_respected_when_asked_for():
    assert [x.shape[0] for x in iter_batches(torch.zeros(3, 3, 4, 4), 1)] == [1, 1, 1]


def test_layers_that_are_all_border_are_not_scored():
    """At 4x4 the later convs have no interior: they must not yield a score."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an empty interior warns nothing
        scores = scan(net, _imgs(4, 4), progress=False)
    last = _native(scores)[_native(scores)["layer"] == "2"]
    assert last["d"].isna().all()


def test_a_1x1_output_with_padding_on_all_sides_has_no_applicable_region():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1),
                        nn.Conv2d(4, 4, 3, padding=1)).eval()  # 4x4 -> 1x1 -> 1x1
    scores = _native(scan(net, _imgs(4, 4), progress=False))
    assert not scores.loc[scores["layer"] == "1", "applicable"].any()
