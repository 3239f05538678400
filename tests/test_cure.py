"""The cure (docs/METHOD.md §14) against ground truth: a planted border detector that mean
padding removes, partial convolution's exact re-weighting, re-padding that leaves a model
unchanged under its own zero padding, distillation that is the identity at 0 steps and
trains only what it is told, saved cures that reload bit for bit, and the CLI's bad inputs.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from pan_utils.cli import main
from pan_utils.engine import cure
from pan_utils.engine.models import load_model, load_weights_file
from pan_utils.engine.policy import padding_policy
from pan_utils.engine.scan import find_pans


class Offset(nn.Module):
    """Shifts the image to a mean of about 4: zero padding is then far from any pixel."""

    def forward(self, x):
        return x + 4.0


def planted() -> nn.Sequential:
    """Channel 0 reads only the row above each position (a top-border detector: the top
    row reads all zeros); the other channels copy the centre pixel of one colour."""
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, :] = 1.0
        for c in range(1, 4):
            conv.weight[c, c - 1, 1, 1] = 1.0
    return nn.Sequential(Offset(), conv, nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()


def images(n: int = 16, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def small_net(seed: int = 0) -> nn.Sequential:
    """A small classifier with BatchNorm, strides and a separate pad module."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_mean_padding_removes_a_planted_top_detector():
    net, x = planted(), images()
    pans = find_pans(net, x, progress=False)
    first = pans[pans["layer"] == "1"]
    assert list(first["channel"]) == [0] and "T" in first["sides"].iloc[0]
    for padding in ("mean", "reflect"):
        cured, _ = cure.swap_padding(net, padding, 24, calibration=images(seed=1))
        after = find_pans(cured, x, progress=False)
        assert not ((after["layer"] == "1") & (after["channel"] == 0)).any(), padding
    # the fill is the channel mean of each padded conv's input, measured on the calibration
    cured, _ = cure.swap_padding(net, "mean", 24, calibration=images(seed=1))
    fill = cured[1].cure_pad.mean
    assert torch.allclose(fill, (images(seed=1) + 4.0).mean(dim=(0, 2, 3)), atol=1e-5)


def test_partial_convolution_of_a_constant_is_constant_at_the_border():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.fill_(1 / 9)  # a box filter: what partial convolution re-weights exactly
        conv.bias.fill_(0.5)
    x = torch.full((1, 1, 9, 11), 2.0)
    net = nn.Sequential(conv)
    zero = net(x)
    assert not torch.allclose(zero, torch.full_like(zero, 2.5))  # zero padding darkens it
    cured, _ = cure.swap_padding(net, "partial", (9, 11))
    with torch.no_grad():
        y = cured(x)
    assert y.shape == zero.shape
    assert torch.allclose(y, torch.full_like(y, 2.5), atol=1e-6)
    # strided, TF-SAME-like one-sided padding too
    conv2 = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 1, 3, stride=2, bias=False))
    with torch.no_grad():
        conv2[1].weight.fill_(1.0)
    cured2, _ = cure.swap_padding(conv2, "partial", (9, 11))
    with torch.no_grad():
        assert torch.allclose(cured2(x), torch.full_like(cured2(x), 18.0), atol=1e-5)


@pytest.mark.parametrize("kind", ["plain", "timm_same", "static_same"])
def test_a_cure_in_zero_mode_is_the_original_and_circular_matches_the_policy(kind):
    if kind == "plain":
        net, size = small_net(), 15
    elif kind == "timm_same":
        from timm.layers import Conv2dSame

        torch.manual_seed(0)
        net, size = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.ReLU(),
                                  Conv2dSame(4, 4, 3)).eval(), 15
    else:
        from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

        torch.manual_seed(0)
        net, size = nn.Sequential(Conv2dStaticSamePadding(3, 4, 3, stride=2, image_size=15),
                                  nn.ReLU()).eval(), 15
    x = images(4, size)
    cured, spec = cure.swap_padding(net, "zeros", size)
    assert spec.layers and all(type(m).__name__ != "Conv2dSame" for m in cured.modules())
    with torch.no_grad():
        assert torch.allclose(cured(x), net(x), atol=1e-6)
        cure.set_padding(cured, "circular")
        with padding_policy(net, "circular"):
            expected = net(x)
        assert torch.allclose(cured(x), expected, atol=1e-6)
        # the circular null runs through padding_policy on the cured model as on any
        cure.set_padding(cured, "reflect")
        with padding_policy(cured, "circular"):
            assert torch.allclose(cured(x), expected, atol=1e-6)
    assert torch.equal(net(x), net(x))  # the original was never touched
    assert not any(isinstance(m, cure.CurePad) for m in net.modules())


def test_distillation_with_0_steps_is_exactly_the_swapped_model():
    net, x = small_net(), images(8, 15)
    cured, _ = cure.swap_padding(net, "mean", 15, calibration=x)
    before = {k: v.clone() for k, v in cured.state_dict().items()}
    with torch.no_grad():
        y0 = cured(x)
    log = cure.distill(cured, net, x, steps=0)
    assert log.steps == 0 and log.loss == []
    with torch.no_grad():
        assert torch.equal(cured(x), y0)
    assert all(torch.equal(before[k], v) for k, v in cured.state_dict().items())
    with pytest.raises(cure.CureError):
        cure.distill(cured, net, x, steps=-1)


def test_distillation_trains_only_its_parameters_and_lowers_the_loss():
    net, x = small_net(), images(32, 15)
    cured, _ = cure.swap_padding(net, "reflect", 15)
    convs = {k: v.clone() for k, v in cured.state_dict().items() if "running" not in k}
    log = cure.distill(cured, net, x, steps=30, lr=1e-2, batch_size=8, params="bn")
    after = cured.state_dict()
    changed = {k for k, v in convs.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith(("1.", "5.")) for k in changed)  # BatchNorm affine only
    assert log.n_params == 4 * 8 and len(log.loss) == 30
    assert sum(log.loss[-5:]) < sum(log.loss[:5])
    assert all(p.requires_grad for p in cured.parameters())  # flags restored
    # the teacher is unchanged and a seeded run repeats exactly
    again, _ = cure.swap_padding(net, "reflect", 15)
    cure.distill(again, net, x, steps=30, lr=1e-2, batch_size=8, params="bn")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())


def test_a_saved_cure_reloads_bit_for_bit(tmp_path):
    net, x = small_net(), images(8, 15)
    cured, spec = cure.swap_padding(net, "mean", 15, calibration=x)
    cure.distill(cured, net, x, steps=2, lr=1e-3, batch_size=4)
    path = cure.save(tmp_path / "cured.pt", cured, spec, "small")
    assert [p.name for p in tmp_path.iterdir()] == ["cured.pt"]  # no temporary file left
    fresh = load_weights_file(small_net(seed=5), path)
    with torch.no_grad():
        assert torch.equal(fresh(x), cured(x))
    assert any(isinstance(m, cure.CurePad) and m.mode == "mean" for m in fresh.modules())
    assert cure.read_cure(path)["cure"]["padding"] == "mean"


def test_a_cured_offline_model_reloads_through_load_model(tmp_path):
    model = load_model("mobilenet_v2").model
    x = images(2, 64)
    cured, spec = cure.swap_padding(model, "partial", 64)
    path = cure.save(tmp_path / "mnv2.pt", cured, spec, "mobilenet_v2")
    for loaded in (load_model("mobilenet_v2", weights=path).model, cure.load(path).model):
        with torch.no_grad():
            assert torch.equal(loaded(x), cured(x))
    with pytest.raises(cure.CureError, match="not a cure"):
        torch.save(model.state_dict(), tmp_path / "plain.pt")
        cure.load(tmp_path / "plain.pt")


def test_unknown_padding_and_a_conv_it_cannot_rewrite_are_refused():
    with pytest.raises(cure.CureError, match="padding must be one of"):
        cure.swap_padding(small_net(), "sideways", 15)

    class Standardised(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(cure.CureError, match="not a plain convolution"):
        cure.swap_padding(nn.Sequential(Standardised(3, 3, 3, padding=1)), "mean", 8,
                          calibration=images(2, 8))


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["--padding", "sideways", "--steps", "1"], "invalid choice: 'sideways'"),
    (["--padding", "mean", "--steps", "-3"], "must be 0 or more, got -3"),
    (["--padding", "mean", "--steps", "x"], "expected a whole number"),
])
def test_cli_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv,
                                                                 expected):
    out = tmp_path / "cured.pt"
    with pytest.raises(SystemExit) as exc:
        main(["cure", "mobilenet_v2", *argv, "--out", str(out)])
    assert exc.value.code == 2
    assert expected in _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing_folder", "a_folder", "under_a_file"])
def test_cli_unwritable_out_exits_2_before_anything_runs(tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    out = {"missing_folder": tmp_path / "no" / "cured.pt", "a_folder": tmp_path,
           "under_a_file": tmp_path / "file" / "cured.pt"}[where]
    before = sorted(os.listdir(tmp_path))
    code = main(["cure", "mobilenet_v2", "--padding", "mean", "--out", str(out)])
    assert code == 2
    assert _one_line(capsys.readouterr().err).startswith("error: --out")
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_cures_measures_and_saves_a_model_that_reloads(tmp_path, capsys):
    out = tmp_path / "cured.pt"
    code = main(["cure", "mobilenet_v2", "--padding", "mean", "--steps", "1", "--batch-size",
                 "2", "--n-eval", "8", "--n-images", "8", "--device", "cpu", "--quiet",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "mean padding, 1 distillation steps (all)" in text and "PANs on 8 scan probes" in text
    blob = cure.read_cure(out)
    assert blob["model"] == "mobilenet_v2" and blob["cure"]["recovery"]["steps"] == 1
    reloaded = load_model("mobilenet_v2", weights=out).model
    fresh = load_model("mobilenet_v2", pretrained=False).model
    cure.restore(fresh, blob)
    x = images(2, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(x), fresh(x))
        assert not torch.equal(reloaded(x), load_model("mobilenet_v2").model(x))
