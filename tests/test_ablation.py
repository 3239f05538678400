"""Ground truth for ablation: small conv nets, hooks capture what the ablated layer emits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pan_utils.engine.ablate import AblationError, ablate, interior_means
from pan_utils.study.ablation import (dose_conditions, dose_grid, dose_summary,
                                      evaluate_conditions, interior_means_from_scores,
                                      place_crops, random_controls, standard_conditions,
                                      top_pans)


def small_net(seed: int = 0) -> nn.Sequential:
    """conv(pad 1) -> BN -> ReLU -> conv(pad 2, dilation 2) -> BN -> pool -> linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=2, dilation=2, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


PANS = pd.DataFrame({"layer": ["0", "0", "3"], "channel": [1, 5, 2], "sides": ["T", "LR", "B"]})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 20, 20, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def means(images) -> pd.DataFrame:
    return interior_means(small_net(), PANS, images)


def capture(module: nn.Module):
    store = {}
    return store, module.register_forward_hook(lambda m, i, o: store.__setitem__("y", o.clone()))


def test_empty_pan_set_is_bit_identical(images):
    net = small_net()
    ref = net(images)
    with ablate(net, PANS.iloc[:0], "mean"), torch.no_grad():
        assert torch.equal(net(images), ref)
    with ablate(net, PANS.iloc[:0], "border"), torch.no_grad():
        assert torch.equal(net(images), ref)


def test_interior_mean_matches_brute_force(images, means):
    net = small_net()
    store, h = capture(net[0])
    net(images)
    h.remove()
    # conv 0: 3x3, pad 1, stride 1 on 20x20 -> one band row/col per side
    want = store["y"][:, 1, 1:-1, 1:-1].mean().item()
    got = means.set_index(["layer", "channel"]).loc[("0", 1), "interior_mean"]
    assert got == pytest.approx(want, rel=1e-5)
    # conv 3: 3x3 dilation 2, pad 2, stride 2 on 20x20 -> 10x10, one band per side
    store, h = capture(net[3])
    net(images)
    h.remove()
    want = store["y"][:, 2, 1:-1, 1:-1].mean().item()
    assert means.set_index(["layer", "channel"]).loc[("3", 2), "interior_mean"] == \
        pytest.approx(want, rel=1e-5)


def test_mean_ablation_makes_channels_constant(images, means):
    net = small_net()
    m = means.set_index(["layer", "channel"])["interior_mean"]
    ref = net(images)
    with ablate(net, PANS, "mean", means):
        s0, h0 = capture(net[0])  # registered after ablate's hook: sees the ablated output
        s3, h3 = capture(net[3])
        with torch.inference_mode():
            out = net(images)
        h0.remove(), h3.remove()
    for (layer, ch), store in ((("0", 1), s0), (("0", 5), s0), (("3", 2), s3)):
        y = store["y"][:, ch]
        assert torch.all(y == y.flatten()[0])
        assert y.flatten()[0].item() == pytest.approx(m[(layer, ch)], rel=1e-6)
    others = [c for c in range(8) if c not in (1, 5)]
    with torch.no_grad():
        intact = net[0](images)
    assert torch.equal(s0["y"][:, others], intact[:, others])
    assert not torch.allclose(out, ref)


def test_border_ablation_changes_only_border_bands(images, means):
    net = small_net()
    m = means.set_index(["layer", "channel"])["interior_mean"]
    with torch.no_grad():
        intact = net[0](images)
    with ablate(net, PANS, "border", means):
        store, h = capture(net[0])
        net(images)
        h.remove()
    y = store["y"]
    assert torch.equal(y[:, :, 1:-1, 1:-1], intact[:, :, 1:-1, 1:-1])  # interior untouched
    for ch in (1, 5):
        border = torch.cat([y[:, ch, 0].flatten(), y[:, ch, -1].flatten(),
                            y[:, ch, :, 0].flatten(), y[:, ch, :, -1].flatten()])
        assert torch.allclose(border, torch.full_like(border, m[("0", ch)]))
    others = [c for c in range(8) if c not in (1, 5)]
    assert torch.equal(y[:, others], intact[:, others])


def planted_border_net() -> nn.Sequential:
    """A net whose class is decided by one known channel: conv channel 1 is a top-border
    detector (only its kernel's top row is set, to -1, with bias 0.5, so on positive
    images it is 0.5 on the top output row, which reads the zero padding, and negative
    everywhere else); after ReLU and pooling the head calls class 1 when that channel fires.
    Channel 0 passes the pixel through and the head reads it too, weakly: removing it
    moves the logits but not the decision."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        conv, head = net[0], net[4]
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0  # channel 0: the pixel itself
        conv.weight[1, 0, 0, :] = -1.0  # channel 1: minus the row above
        conv.bias.copy_(torch.tensor([0.0, 0.5]))
        head.weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 16.0]]))
        head.bias.copy_(torch.tensor([0.5, 0.0]))
    return net.eval()


def test_ablating_the_planted_channel_flips_the_prediction():
    # Pixels in [0.5, 1.5] on 8x8: channel 1 pools to 0.5 / 8, so class 1 scores
    # 16 * 0.0625 + 0.1 * (pixel mean) in [1.05, 1.15] > 0.5; without it, at most 0.15.
    gen = torch.Generator().manual_seed(0)
    scan_set, x = (0.5 + torch.rand(n, 1, 8, 8, generator=gen) for n in (16, 12))
    net = planted_border_net()
    with torch.no_grad():
        logits = net(x)
    assert (logits.argmax(1) == 1).all()
    planted = pd.DataFrame({"layer": ["0"], "channel": [1]})
    other = pd.DataFrame({"layer": ["0"], "channel": [0]})
    for how in ("mean", "border"):  # the planted channel carries only its border band
        with ablate(net, planted, how, images=scan_set), torch.no_grad():
            assert (net(x).argmax(1) == 0).all(), how
        with ablate(net, other, how, images=scan_set), torch.no_grad():
            out = net(x)
        assert (out.argmax(1) == 1).all(), how
        assert not torch.allclose(out, logits)  # the control channel did change the logits
    means = interior_means(net, planted, scan_set).set_index("channel")["interior_mean"]
    assert means[1] < 0  # the interior of the detector is off, so its mean is too


def test_state_and_hooks_restored_on_exit_and_on_error(images, means):
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for how in ("mean", "border"):
        with ablate(net, PANS, how, means):
            net(images)
        with pytest.raises(RuntimeError, match="boom"):
            with ablate(net, PANS, how, means):
                net(images)
                raise RuntimeError("boom")
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_missing_mean_or_unknown_layer_is_an_error(means):
    net = small_net()
    with pytest.raises(AblationError):
        with ablate(net, pd.DataFrame({"layer": ["0"], "channel": [2]}), "mean", means):
            pass
    with pytest.raises(AblationError):
        with ablate(net, pd.DataFrame({"layer": ["2"], "channel": [0]}), "mean", {("2", 0): 0}):
            pass
    assert all(not m._forward_hooks for m in net.modules())


def test_random_controls_never_pick_pans_and_match_layer_counts():
    cand = pd.DataFrame([(layer, c) for layer, n in (("a", 10), ("b", 6), ("c", 4))
                         for c in range(n)], columns=["layer", "channel"])
    pans = pd.DataFrame({"layer": ["a", "a", "a", "b"], "channel": [0, 3, 7, 5]})
    ctrl = random_controls(cand, pans, n_draws=20, seed=3)
    assert set(ctrl["draw"]) == set(range(20))
    pan_set = set(zip(pans["layer"], pans["channel"]))
    assert not pan_set & set(zip(ctrl["layer"], ctrl["channel"]))
    for _, g in ctrl.groupby("draw"):
        assert g.groupby("layer").size().to_dict() == {"a": 3, "b": 1}
        assert not g.duplicated(["layer", "channel"]).any()
    assert ctrl.equals(random_controls(cand, pans, n_draws=20, seed=3))
    assert not ctrl.equals(random_controls(cand, pans, n_draws=20, seed=4))
    assert len(set(map(tuple, ctrl[ctrl.layer == "a"].groupby("draw")["channel"]
                       .apply(tuple)))) > 1  # draws differ


def test_evaluate_conditions_metrics(images, means):
    net = small_net()
    x = torch.cat([images, images.flip(-1)])
    labels = torch.tensor([0, 1, 2, 3, 4, -1] * 2)
    cand = pd.DataFrame({"layer": ["0"] * 8 + ["3"] * 6,
                         "channel": list(range(8)) + list(range(6))})
    all_means = interior_means(net, cand, images)
    conds = standard_conditions(PANS, all_means, random_controls(cand, PANS, 2, 0))
    abl, shift = evaluate_conditions(net, [(x[:5], labels[:5]), (x[5:], labels[5:])], conds,
                                     model_name="net", progress=False)
    assert list(abl["condition"]) == ["intact", "pans_mean", "pans_border", "random_mean",
                                      "random_mean", "random_border", "random_border",
                                      "padding_reflect", "padding_replicate",
                                      "padding_circular"]
    intact = abl.iloc[0]
    assert intact["agreement"] == 1 and intact["kl"] == pytest.approx(0, abs=1e-7)
    assert abl["agreement"].between(0, 1).all()
    with torch.no_grad():
        logits = net(x)
    pred = logits.argmax(1)
    want_acc = float((pred == labels)[labels >= 0].float().mean())
    assert intact["accuracy"] == pytest.approx(want_acc)
    with ablate(net, PANS, "mean", all_means), torch.no_grad():
        logits_m = net(x)
    pred_m = logits_m.argmax(1)
    row = abl[abl.condition == "pans_mean"].iloc[0]
    assert row["agreement"] == pytest.approx(float((pred_m == pred).float().mean()))
    # mean KL(intact || ablated) over the images, computed here from the two outputs
    lp, lp_m = F.log_softmax(logits, 1), F.log_softmax(logits_m, 1)
    want_kl = float((lp.exp() * (lp - lp_m)).sum(1).mean())
    assert want_kl > 1e-6 and row["kl"] == pytest.approx(want_kl, rel=1e-4)
    assert row["n_ablated"] == 3
    sums = shift.groupby(["condition", "draw"])[["count_intact", "count_condition"]].sum()
    assert (sums == len(x)).all().all()
    assert (shift["shift"] == shift["count_condition"] - shift["count_intact"]).all()


def test_place_crops_centre_and_corners():
    x = torch.ones(4, 3, 8, 8) * torch.arange(1, 5).view(4, 1, 1, 1).float()
    c = place_crops(x, "centre", 0.5)
    assert torch.equal(c[:, :, 2:6, 2:6], x[:, :, :4, :4])
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = False
    assert (c[:, :, mask] == 0).all()
    k = place_crops(x, "corner", 0.5)
    spots = [(0, 0), (0, 4), (4, 0), (4, 4)]  # TL, TR, BL, BR
    for i, (t, l) in enumerate(spots):
        assert torch.equal(k[i, :, t:t + 4, l:l + 4], x[i, :, :4, :4])
        assert k[i].abs().sum() == x[i, :, :4, :4].abs().sum()
    with pytest.raises(ValueError):
        place_crops(x, "middle")


def test_folder_eval_set_is_disjoint_from_scan_set(tmp_path):
    from PIL import Image

    from pan_utils.study.ablation import eval_images
    from pan_utils.study.settings import settings
    from pan_utils.engine.models import Preprocessing
    from pan_utils.engine.probes import ImageFolderProbe

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png")
    s = settings("smoke", data_dir=str(tmp_path), n_images=5, n_eval=4, seed=0)
    ev = eval_images(Preprocessing(), s, 8)
    scan = ImageFolderProbe(tmp_path, 8, n=5, seed=0)
    assert len(ev) == 4 and not set(ev.files) & set(scan.files)
    x, y = next(ev.batches(8))
    assert x.shape == (4, 3, 8, 8) and set(y.tolist()) <= {0, 1}
    s = s.replace(n_eval=100)  # more than is left: all the others
    assert len(eval_images(Preprocessing(), s, 8)) == 7


def test_border_ablation_follows_asymmetric_pad_module_geometry():
    # TF-SAME style: a pad module adds one row/col at the bottom/right only, so only the
    # last output row and column read padding.
    torch.manual_seed(0)
    net = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, stride=2)).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        intact = net(x)
    assert intact.shape[-2:] == (4, 4)
    with ablate(net, pd.DataFrame({"layer": ["1"], "channel": [2]}), "border", {("1", 2): 7.0}):
        with torch.no_grad():
            y = net(x)
    assert torch.equal(y[:, 2, :3, :3], intact[:, 2, :3, :3])
    assert (y[:, 2, 3, :] == 7).all() and (y[:, 2, :, 3] == 7).all()
    assert torch.equal(y[:, [0, 1, 3]], intact[:, [0, 1, 3]])


def test_dose_grid_is_logarithmic_from_one_to_all():
    assert dose_grid(0) == [] and dose_grid(1) == [1] and dose_grid(3, 6) == [1, 2, 3]
    g = dose_grid(357, 6)
    assert g[0] == 1 and g[-1] == 357 and len(g) <= 6 and g == sorted(set(g))
    ratios = np.diff(np.log(g))
    assert ratios.max() / ratios.min() < 1.5  # evenly spaced in log k


def test_dose_controls_match_the_top_k_layers_and_never_draw_a_pan():
    cand = pd.DataFrame({"layer": ["a"] * 10 + ["b"] * 10, "order": [0] * 10 + [1] * 10,
                         "channel": list(range(10)) * 2})
    pans = pd.DataFrame({"layer": ["a", "a", "b", "b", "b"], "order": [0, 0, 1, 1, 1],
                         "channel": [0, 1, 0, 1, 2], "score": [9.0, 3.0, 8.0, 7.0, 4.0]})
    conds, used = dose_conditions(pans, cand, {}, [1, 3, 5], n_draws=2, seed=0)
    pan_set = set(zip(pans["layer"], pans["channel"]))
    assert [c.name for c in conds[:1]] == ["intact"]
    for k in (1, 3, 5):
        mine = [c for c in conds if c.k == k]
        assert sorted({c.name for c in mine}) == ["pans_border", "pans_mean", "random_border",
                                                   "random_mean"]
        assert all(c.n_ablated == k for c in mine)
    top3 = top_pans(pans, 3)
    assert list(top3["score"]) == [9.0, 8.0, 7.0]
    drawn = used.iloc[len(top3):]  # channels used by the random controls are never PANs
    assert not set(zip(used["layer"], used["channel"])) - pan_set - set(
        zip(cand["layer"], cand["channel"]))
    controls = random_controls(cand, top3, 4, 1, exclude=pans)
    assert not set(zip(controls["layer"], controls["channel"])) & pan_set
    per_layer = controls.groupby(["draw", "layer"]).size().unstack()
    assert (per_layer["a"] == 1).all() and (per_layer["b"] == 2).all()
    assert len(drawn)


def test_dose_summary_gap_is_control_minus_pans():
    rows = [("m", 2, "pans_mean", 0, 0.5), ("m", 2, "random_mean", 0, 0.8),
            ("m", 2, "random_mean", 1, 0.9), ("m", 2, "pans_border", 0, 0.7),
            ("m", 2, "random_border", 0, 0.7), ("m", 2, "random_border", 1, 0.7)]
    dose = pd.DataFrame(rows, columns=["model", "k", "condition", "draw", "agreement"]).assign(
        kl=0.1)
    s = dose_summary(dose).set_index("how")
    assert s.loc["mean", "gap"] == pytest.approx(0.85 - 0.5)
    assert s.loc["border", "gap"] == pytest.approx(0.0)
    assert np.isnan(s.loc["border", "gap_in_sd"])  # no spread: no gap in sd


def test_interior_means_from_the_scan_equal_a_separate_pass(images):
    from pan_utils import scan

    net = small_net()
    scores = scan(net, images, progress=False)
    got = interior_means_from_scores(scores)
    want = interior_means(net, got[["layer", "channel"]], images)
    np.testing.assert_allclose(got["interior_mean"], want["interior_mean"], rtol=1e-6,
                               atol=1e-7)
