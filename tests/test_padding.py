"""Every padding form of docs/METHOD.md §2 is found with the right widths, and switched exactly."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pan_utils import padded_convs, padding_policy
from pan_utils.engine.geometry import same_padding
from pan_utils.engine.padding import MODES, discover, discovering, is_dynamic_same, is_tf_same


class StaticSamePadConv(nn.Conv2d):
    """EfficientNet-Lite's pattern: the conv owns a ZeroPad2d fixed at construction."""

    def __init__(self, cin, cout, k, stride, image_size):
        super().__init__(cin, cout, k, stride=stride, bias=False)
        ph = max((-(-image_size // stride) - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((ph // 2, ph - ph // 2, ph // 2, ph - ph // 2))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


class AllForms(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import Conv2dSame

        self.plain = nn.Conv2d(3, 4, 3, padding=1)
        self.rect = nn.Conv2d(4, 4, (3, 5), padding=(1, 2), padding_mode="reflect")
        self.same_even = nn.Conv2d(4, 4, 4, padding="same")
        self.tf_same = Conv2dSame(4, 4, 3, stride=2)
        self.explicit = nn.Sequential(nn.ZeroPad2d((0, 1, 2, 0)), nn.Conv2d(4, 4, 3))
        self.static_same = StaticSamePadConv(4, 8, 3, 2, image_size=16)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.pointwise_padded = nn.Conv2d(8, 8, 1, padding=1)  # kernel 1: not a candidate

    def forward(self, x):
        x = self.same_even(self.rect(self.plain(x)))
        x = self.explicit(self.tf_same(x))
        x = self.dilated(self.depthwise(self.static_same(x)))
        return self.pointwise_padded(self.pointwise(x))


def _by_layer(size):
    return padded_convs(AllForms().eval(), size, all_convs=True).set_index("layer")


@pytest.mark.parametrize("size", [32, 33])
def test_every_padding_form_is_found_with_its_sides(size):
    df = _by_layer(size)
    pads = {n: tuple(df.loc[n, ["pad_top", "pad_bottom", "pad_left", "pad_right"]])
            for n in df.index}
    assert pads["plain"] == (1, 1, 1, 1)
    assert pads["rect"] == (1, 1, 2, 2) and df.loc["rect", "padding_mode"] == "reflect"
    assert pads["same_even"] == (1, 2, 1, 2)  # torch puts the extra pixel after
    # TF-SAME at stride 2: 32 needs one pixel (bottom/right only), 33 needs one each side.
    assert pads["tf_same"] == ((0, 1, 0, 1) if size == 32 else (1, 1, 1, 1))
    assert df.loc["tf_same", "padding_kind"] == "dynamic_same"
    assert pads["explicit.1"] == (2, 0, 0, 1)
    assert df.loc["explicit.1", "padding_kind"] == "pad_module"
    assert df.loc["explicit.1", "pad_module"] == "explicit.0"
    assert pads["static_same"] == (0, 1, 0, 1)  # fixed for 16 px whatever comes in
    assert df.loc["static_same", "padding_kind"] == "child_pad"
    assert pads["depthwise"] == (1, 1, 1, 1) and df.loc["depthwise", "groups"] == 8
    assert pads["dilated"] == (2, 2, 2, 2) and df.loc["dilated", "dilation_h"] == 2
    assert not df.loc["pointwise", "candidate"]
    assert not df.loc["pointwise_padded", "candidate"]
    assert df.drop(index=["pointwise", "pointwise_padded"])["candidate"].all()
    only = padded_convs(AllForms().eval(), size)
    assert set(only["layer"]) == set(df.index) - {"pointwise", "pointwise_padded"}


def test_tf_same_convs_are_told_apart_from_the_others():
    model = AllForms()
    assert is_dynamic_same(model.tf_same) and is_tf_same(model.tf_same)
    # its own pad module, fixed for one size: TF-SAME, but not recomputed in forward
    assert not is_dynamic_same(model.static_same) and is_tf_same(model.static_same)
    for name in ("plain", "same_even", "depthwise"):
        conv = getattr(model, name)
        assert not is_dynamic_same(conv) and not is_tf_same(conv), name


def test_explicit_pad_input_size_is_before_padding():
    df = _by_layer(32)
    # tf_same: 32 -> 16; the explicit pad adds 2 rows and 1 column around that 16x16.
    assert (df.loc["explicit.1", "in_h"], df.loc["explicit.1", "in_w"]) == (16, 16)
    assert (df.loc["explicit.1", "out_h"], df.loc["explicit.1", "out_w"]) == (16, 15)


def test_uneven_stride_two_bands():
    df32, df33 = _by_layer(32), _by_layer(33)
    # TF-SAME at 32: nothing on top/left, so no top/left band; at 33 all four exist.
    assert tuple(df32.loc["tf_same", ["band_top", "band_bottom"]]) == (0, 1)
    assert tuple(df33.loc["tf_same", ["band_top", "band_bottom"]]) == (1, 1)
    mb = padded_convs(nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1)), 224)
    assert tuple(mb.loc[0, ["band_top", "band_bottom", "band_left", "band_right"]]) == (1, 0, 1, 0)
    mb = padded_convs(nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1)), 225)
    assert tuple(mb.loc[0, ["band_top", "band_bottom", "band_left", "band_right"]]) == (1, 1, 1, 1)


def test_same_padding_matches_tensorflow_formula():
    assert same_padding(224, 3, 2, 1) == (0, 1)
    assert same_padding(225, 3, 2, 1) == (1, 1)
    assert same_padding(224, 5, 2, 1) == (1, 2)
    assert same_padding(10, 3, 1, 2) == (2, 2)


def test_batchnorm_link_by_tensor_identity():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[1].weight[2] = -1
    sites = {s.name: s for s in discover(net, 16)}
    assert sites["0"].bn == "1" and sites["0"].bn_sign.tolist() == [1, 1, -1, 1]
    assert sites["3"].bn is None  # a ReLU sits between conv and BN


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("mode", MODES)
def test_switched_layers_equal_fresh_layers_of_that_mode(mode):
    torch.manual_seed(0)
    model = AllForms().eval()
    x = torch.randn(2, 3, 32, 32)
    h = torch.randn(2, 4, 16, 16)
    conv = model.plain
    fresh = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode)
    fresh.load_state_dict(conv.state_dict())
    with padding_policy(model, mode):
        assert torch.allclose(_outputs(conv, x), _outputs(fresh, x))
        # TF-SAME conv: pad (0, 1, 0, 1) with the mode, then a valid conv.
        fmode = "constant" if mode == "zeros" else mode
        want = F.conv2d(F.pad(h, (0, 1, 0, 1), mode=fmode), model.tf_same.weight,
                        model.tf_same.bias, 2)
        assert torch.allclose(_outputs(model.tf_same, h), want)
        pad = model.explicit[0]
        assert torch.equal(pad(h), F.pad(h, (0, 1, 2, 0), mode=fmode))
        assert torch.equal(model.static_same.static_padding(h),
                           F.pad(h, (0, 1, 0, 1), mode=fmode))


def test_box_filter_on_constant_image():
    box = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.constant_(box.weight, 1 / 9)
    net = nn.Sequential(box)
    ones = torch.ones(1, 1, 6, 7)
    with padding_policy(net, "zeros"):
        y = _outputs(net, ones)[0, 0]
    assert torch.allclose(y[0, 0], torch.tensor(4 / 9))
    assert torch.allclose(y[0, 3], torch.tensor(6 / 9))
    assert torch.allclose(y[3, 0], torch.tensor(6 / 9))
    assert torch.allclose(y[1:-1, 1:-1], torch.ones(4, 5))
    for mode in ("reflect", "replicate", "circular"):
        with padding_policy(net, mode):
            assert torch.allclose(_outputs(net, ones), ones)


def _fingerprint(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m), m.__dict__.get("forward"), getattr(m, "padding_mode", None))
             for n, m in model.named_modules()])


def test_policy_restores_model_exactly_also_after_error():
    torch.manual_seed(1)
    model = AllForms().eval()
    x = torch.randn(2, 3, 32, 32)
    y0 = _outputs(model, x)
    state, modules = _fingerprint(model)
    for mode in MODES:
        with padding_policy(model, mode):
            _outputs(model, x)
    with pytest.raises(RuntimeError, match="boom"):
        with padding_policy(model, "circular"):
            assert not torch.equal(_outputs(model, x), y0)
            raise RuntimeError("boom")
    state2, modules2 = _fingerprint(model)
    assert modules2 == modules
    assert all(torch.equal(state[k], v) for k, v in state2.items())
    assert torch.equal(_outputs(model, x), y0)


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="padding mode must be one of"):
        with padding_policy(AllForms(), "mirror"):
            pass


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("mode", MODES)
def test_same_string_padding_widths_match_torch(mode):
    """The (1, 2) split reported for a 4x4 'same' conv is what torch really pads."""
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 2, 4, padding="same", padding_mode=mode)
    x = torch.randn(1, 2, 9, 9)
    fmode = "constant" if mode == "zeros" else mode
    want = F.conv2d(F.pad(x, (1, 2, 1, 2), mode=fmode), conv.weight, conv.bias)
    assert torch.allclose(_outputs(conv, x), want, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 1, 2, 0), (2, 3, 1, 2)])
def test_channels_last_padding_equals_f_pad(mode, pads):
    from pan_utils.engine.policy import pad_like

    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last)
    y = pad_like(x, pads, mode)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, F.pad(x, pads, mode="constant" if mode == "zeros" else mode))


def test_nested_policies_restore_in_order():
    model = AllForms().eval()
    x = torch.randn(1, 3, 32, 32)
    y0 = _outputs(model, x)
    with padding_policy(model, "reflect"):
        y_reflect = _outputs(model, x)
        with padding_policy(model, "circular"):
            assert not torch.equal(_outputs(model, x), y_reflect)
        assert torch.equal(_outputs(model, x), y_reflect)
    assert torch.equal(_outputs(model, x), y0)


def test_discovery_keeps_no_feature_map_alive():
    """A scan discovers on its first real batch: the maps seen must be freed as usual."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                        nn.Conv2d(4, 4, 3, padding=1)).eval()
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(weakref.ref(o)))
    with discovering(net) as found, torch.no_grad():
        net(torch.randn(2, 3, 16, 16))
        assert [s.name for s in found.values()] == ["0", "2"]
        assert found[net[0]].bn == "1"  # linked by identity while the map was alive
        assert seen[0]() is None
