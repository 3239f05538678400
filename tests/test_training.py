"""The padding-policy nets and tasks of notebook 04: shapes, equivariance, determinism,
disjoint splits, and that the location task separates bordered from borderless nets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pan_utils.engine.probes import ProbeError
from pan_utils.study import nets, padding_policy, tasks, training
from pan_utils.study.nets import POLICIES, build_model, feature_size


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("size", [32, 48])
def test_shapes_per_policy(policy, size):
    m = build_model(policy, 7, width=4, depth=1, image_size=size).eval()
    x = torch.randn(2, 3, size, size)
    stem = m.stem(x)
    f = m.features(x)
    expect = feature_size(size, 1, policy)
    assert m(x).shape == (2, 7)
    assert f.shape == (2, 16, expect, expect)
    if policy == "valid":
        assert stem.shape[-1] == size - 2  # no padding: each 3x3 conv trims one pixel per side
        assert expect == {32: 2, 48: 6}[size]
    else:
        assert stem.shape[-1] == size and expect == size // 4


def test_valid_too_small_is_a_clear_error():
    with pytest.raises(nets.TrainingError, match="at least"):
        build_model("valid", 3, depth=1, image_size=nets.min_valid_size(1) - 1)
    with pytest.raises(nets.TrainingError, match="padding"):
        build_model("same", 3)


def _randomise_bn(m):
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


@pytest.mark.parametrize("depth", [1, 2])
def test_circular_net_is_translation_equivariant(depth):
    m = _randomise_bn(build_model("circular", 5, width=4, depth=depth, seed=3))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    m = m.double()
    s = m.total_stride
    with torch.no_grad():
        f, fr = m.features(x), m.features(torch.roll(x, (s, 2 * s), (-2, -1)))
        torch.testing.assert_close(fr, torch.roll(f, (1, 2), (-2, -1)))
        torch.testing.assert_close(m(torch.roll(x, (16, 16), (-2, -1))), m(x))
    # control: a zero-padded net is not (the border moves relative to the content)
    z = _randomise_bn(build_model("zeros", 5, width=4, depth=depth, seed=3)).double()
    with torch.no_grad():
        assert not torch.allclose(z(torch.roll(x, (16, 16), (-2, -1))), z(x), atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2])
def test_valid_net_is_translation_equivariant_on_the_interior(depth):
    m = _randomise_bn(build_model("valid", 5, width=4, depth=depth, seed=4)).double()
    big = torch.randn(1, 3, 72, 72, dtype=torch.float64)
    s = m.total_stride
    with torch.no_grad():
        a = m.features(big[..., :68, :68])
        b = m.features(big[..., s:68 + s, s:68 + s])
    assert a.shape[-1] >= 2
    torch.testing.assert_close(a[..., 1:, 1:], b[..., :-1, :-1])


def test_location_classes_swap_under_half_roll_for_circular_nets():
    """The construction that makes the location task unsolvable without a border."""
    data = tasks.location_task(8, 4, size=40, obj=12, seed=5)
    m = _randomise_bn(build_model("circular", 4, width=4, seed=0))
    x = data.x_train
    with torch.no_grad():
        torch.testing.assert_close(m(torch.roll(x, 20, -1)), m(x), atol=1e-4, rtol=1e-4)


def test_location_task_needs_a_border():
    """A small zero-padded net learns the quadrant; a circular one stays near chance."""
    data = tasks.location_task(512, 256, size=40, obj=12, seed=0)
    acc = {}
    for policy in ("zeros", "circular"):
        m = build_model(policy, 4, width=8, depth=1, image_size=40, seed=0)
        training.train_model(m, data, epochs=6, batch_size=64, lr=5e-3, seed=0,
                             progress=False)
        acc[policy] = training.evaluate(m, data)
    assert acc["zeros"] >= 0.6, acc
    assert acc["circular"] <= 0.4, acc


def test_datasets_are_deterministic():
    for make in (tasks.content_task, tasks.location_task):
        a, b = make(24, 12, seed=7), make(24, 12, seed=7)
        c = make(24, 12, seed=8)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
        assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
        assert not torch.equal(a.x_train, c.x_train)
        assert sorted(set(a.y_train.tolist())) == list(range(len(a.classes)))


def test_content_train_and_test_regions_are_disjoint():
    for w in (100, 384, 641):
        (a0, a1), (b0, b1) = tasks.content_regions(w, 0.7)
        assert a0 == 0 and a1 == b0 and b1 == w and 0 < a1 < w
    # photos whose train columns are black and test columns white: any leak shows
    photos = []
    for i, (h, w) in enumerate([(120, 200), (150, 170), (90, 300)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, tasks.content_regions(w)[1][0]:] = 255
        photos.append((f"p{i}", img))
    data = tasks.content_task(30, 30, size=16, seed=0, photos=photos, min_crop=16,
                                 max_crop=40, photo_side=None)
    lo = (0 - tasks.TASK_MEAN[0]) / tasks.TASK_STD[0]
    hi = (1 - tasks.TASK_MEAN[0]) / tasks.TASK_STD[0]
    assert torch.allclose(data.x_train, torch.full_like(data.x_train, lo))
    assert torch.allclose(data.x_test, torch.full_like(data.x_test, hi))


def test_scan_counts_for_valid_and_circular():
    x = torch.randn(8, 3, 32, 32)
    for policy in ("valid", "circular"):
        m = build_model(policy, 3, width=4, seed=0).eval()
        pans, counts = padding_policy.scan_trained(m, x)
        assert counts["pans"] == 0 and not pans.get("is_pan", pd.Series([], dtype=bool)).any()
        assert counts["candidates"] == (0 if policy == "valid" else 60)
    m = build_model("zeros", 3, width=4, seed=0)
    assert padding_policy.candidate_channels(m, 32) == 4 + 2 * 4 + 2 * 8 + 2 * 16


def test_imagefolder_task_and_one_training_step(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            arr = rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    data = tasks.imagefolder_task(tmp_path, size=32, test_frac=0.2, seed=0)
    assert data.classes == ["cats", "dogs"]
    assert data.n_train == 8 and data.n_test == 2
    assert data.x_test.shape == (2, 3, 32, 32)
    row, model, _ = padding_policy.run_one(data, "zeros", 0, width=4, epochs=1, batch_size=4,
                                     n_scan=2, progress=False)
    assert row["steps"] == 2 and 0 <= row["test_accuracy"] <= 1
    with pytest.raises(ProbeError):
        tasks.imagefolder_task(tmp_path / "missing")


def test_pan_mean_maps_equal_brute_force_means_with_bn_sign():
    import pandas as pd
    from torch import nn

    from pan_utils.study.padding_policy import pan_mean_maps

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        net[1].weight[2] = -1.0
    x = torch.randn(10, 3, 8, 8)
    pans = pd.DataFrame({"layer": ["0", "0"], "channel": [2, 1], "sides": ["T", "L"],
                         "score": [5.0, 4.0]})
    maps = pan_mean_maps(net, x, pans, batch_size=3)
    with torch.no_grad():
        y = net[0](x).mean(0)
    for pan, channel, sign in ((0, 2, -1.0), (1, 1, 1.0)):
        got = maps[maps["pan"] == pan].pivot(index="y", columns="x", values="activation")
        assert torch.allclose(torch.tensor(got.to_numpy(), dtype=torch.float32),
                              sign * y[channel], atol=1e-5)


# ------------------------------------------------------------ per-epoch tracking


def test_epoch_callback_sees_every_epoch_and_leaves_training_unchanged():
    data = tasks.location_task(40, 8, size=16, obj=6, seed=1)

    def fit(callback):
        m = build_model("zeros", 4, width=4, depth=1, image_size=16, seed=0)
        out = training.train_model(m, data, epochs=3, batch_size=16, seed=0, progress=False,
                                   on_epoch=callback)
        return m, out

    seen = []

    def callback(epoch, model):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(5)  # a callback that draws from the global RNG must not matter
        seen.append((epoch, {k: v.clone() for k, v in model.state_dict().items()}))

    ref, out_ref = fit(None)
    m, out = fit(callback)
    assert [e for e, _ in seen] == [1, 2, 3] and out["epochs"] == out_ref["epochs"] == 3
    assert out["steps"] == out_ref["steps"] == 9
    for k, v in ref.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
        assert torch.equal(v, seen[-1][1][k]), k  # the last call saw the final weights
    assert not torch.equal(seen[0][1]["stem.0.weight"], seen[-1][1]["stem.0.weight"])
    assert not m.training


def test_epoch_callback_runs_once_when_max_steps_stops_mid_epoch():
    data = tasks.location_task(40, 8, size=16, obj=6, seed=1)
    m = build_model("zeros", 4, width=4, image_size=16, seed=0)
    seen = []
    out = training.train_model(m, data, epochs=4, batch_size=16, max_steps=7, seed=0,
                               progress=False, on_epoch=lambda e, _: seen.append(e))
    assert out["steps"] == 7 and seen == [1, 2, 3]  # 3 steps per epoch; the third is cut


def test_run_one_epoch_log_matches_final_row():
    data = tasks.location_task(64, 16, size=16, obj=6, seed=2)
    log = []
    row, _, _ = padding_policy.run_one(data, "zeros", 0, width=4, epochs=2, batch_size=16,
                                       n_scan=16, progress=False, epoch_log=log)
    assert [r["epoch"] for r in log] == [1, 2]
    assert set(log[0]) == {"task", "policy", "seed", "epoch", "pans", "pans_half_tau",
                           "max_abs_d", "test_accuracy"}
    for k in ("pans", "pans_half_tau", "max_abs_d", "test_accuracy"):
        assert log[-1][k] == row[k]


# ------------------------------------------------------------ generalisation task


def test_generalisation_regions_are_disjoint_and_similar_uses_training_positions():
    for size, obj in ((40, 12), (48, 16), (32, 16)):
        r = tasks.generalisation_regions(size, obj)
        assert r["similar"] == r["train"]
        (a0, a1), (b0, b1) = r["train"], r["dissimilar"]
        # a patch spans columns [x0, x0 + obj): left ones end by size/2, right ones start there
        assert a0 == 0 and a1 + obj <= size // 2 <= b0 and b1 + obj == size
    data = tasks.generalisation_task(30, 20, size=32, obj=12, seed=0)
    pos = data.info["positions"]
    half = 16
    assert (pos["train"][:, 1] + 12 <= half).all() and (pos["similar"][:, 1] + 12 <= half).all()
    assert (pos["dissimilar"][:, 1] >= half).all()
    assert set(map(int, pos["similar"][:, 1])) <= set(range(0, half - 12 + 1))
    assert (pos["dissimilar"][:, 1] == pos["similar"][:, 1] + half).all()  # paired splits
    for p in pos.values():
        assert (p[:, 0] >= 0).all() and (p[:, 0] + 12 <= 32).all()
    assert data.x_train.shape == (30, 3, 32, 32) and data.info["dissimilar"][0].shape == (20, 3, 32, 32)
    assert torch.equal(data.y_test, data.info["dissimilar"][1])


def test_generalisation_patches_sit_where_recorded_and_pixels_are_disjoint():
    # flat photos: black train columns, white test columns; a flat grey texture
    photos = []
    for i, (h, w) in enumerate([(120, 200), (150, 170)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, tasks.content_regions(w)[1][0]:] = 255
        photos.append((f"p{i}", img))
    grey = [("grey", np.full((64, 64, 3), 128, np.uint8))]
    data = tasks.generalisation_task(12, 10, size=32, obj=10, seed=3, photos=photos,
                                     textures=grey, min_crop=16, max_crop=40,
                                     photo_side=None)
    lo = (0 - tasks.TASK_MEAN[0]) / tasks.TASK_STD[0]
    hi = (1 - tasks.TASK_MEAN[0]) / tasks.TASK_STD[0]
    splits = {"train": (data.x_train, lo), "similar": (data.x_test, hi),
              "dissimilar": (data.info["dissimilar"][0], hi)}
    for name, (x, value) in splits.items():
        for img, (y0, x0) in zip(x, data.info["positions"][name]):
            inside = torch.zeros(32, 32, dtype=torch.bool)
            inside[y0:y0 + 10, x0:x0 + 10] = True
            assert torch.allclose(img[:, inside], torch.full_like(img[:, inside], value))
            assert (img[:, ~inside] - value).abs().min() > 0.5  # background is grey
