"""Model state is global: every context manager that hooks or switches a model undoes it on
exit, also on error; and an ablation is exactly mask plus replacement (docs/METHOD.md §7).

Expected values are computed directly (the un-hooked conv output), never snapshots.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from pan_utils.engine.ablate import ablate
from pan_utils.engine.hooks import eval_mode, hooks
from pan_utils.engine.policy import padding_policy


class Boom(RuntimeError):
    """Raised inside a block to check the undo path."""


def n_hooks(model: nn.Module) -> int:
    """Forward hooks and pre-hooks registered on any module of ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def small_net() -> nn.Module:
    """Padding in three forms (pad module, conv padding, reflect) and a BatchNorm."""
    torch.manual_seed(0)
    return nn.Sequential(nn.ZeroPad2d((1, 1, 2, 0)), nn.Conv2d(3, 4, 3),
                         nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                         nn.Conv2d(4, 2, 5, padding=2))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- hooks()


def test_hooks_removed_on_normal_exit(x):
    model = small_net().eval()
    seen, pre_seen = [], []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with hooks(forward=[(m, lambda m, i, o: seen.append(o.shape)) for m in convs],
               pre=[(model, lambda m, i: pre_seen.append(i[0].shape))]):
        assert n_hooks(model) == len(convs) + 1
        model(x)
    assert len(seen) == len(convs) and pre_seen == [x.shape]
    assert n_hooks(model) == 0
    model(x)
    assert len(seen) == len(convs)  # removed hooks no longer fire


def test_hooks_removed_when_block_raises(x):
    model = small_net().eval()
    with pytest.raises(Boom):
        with hooks(forward=[(model[1], lambda m, i, o: o * 0)],
                   pre=[(model[4], lambda m, i: None)]):
            model(x)
            raise Boom
    assert n_hooks(model) == 0


def test_hooks_removed_when_a_hook_raises(x):
    model = small_net().eval()

    def bad(m, i, o):
        raise Boom

    with pytest.raises(Boom):
        with hooks(forward=[(model[1], bad)]):
            model(x)
    assert n_hooks(model) == 0


# --------------------------------------------------------------------------- eval_mode()


def mixed_training_model() -> nn.Module:
    model = small_net().train()
    model[2].eval()  # a frozen BatchNorm inside a model in train mode
    return model


@pytest.mark.parametrize("error", [False, True])
def test_eval_mode_restores_each_modules_own_flag(error):
    model = mixed_training_model()
    before = [(m, m.training) for m in model.modules()]
    assert model.training and not model[2].training
    with pytest.raises(Boom) if error else torch.no_grad():
        with eval_mode(model) as m:
            assert m is model
            assert not any(mod.training for mod in model.modules())
            if error:
                raise Boom
    assert [(m, m.training) for m in model.modules()] == before


# --------------------------------------------------------------------------- padding_policy()


def test_padding_policy_restores_model_exactly_after_error(x):
    model = small_net().eval()
    y0, state0 = model(x).detach(), state_copy(model)
    structure0 = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(Boom):
        with padding_policy(model, "circular"):
            assert not torch.equal(model(x), y0)  # the swap is in effect
            raise Boom
    assert [(n, type(m)) for n, m in model.named_modules()] == structure0
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert [m.padding_mode for m in model.modules() if isinstance(m, nn.Conv2d)] == \
        ["zeros", "reflect", "zeros"]
    assert n_hooks(model) == 0
    assert_same_state(model, state0)
    assert torch.equal(model(x), y0)


# --------------------------------------------------------------------------- ablate()


@pytest.mark.parametrize("how", ["mean", "border"])
def test_ablate_restores_model_exactly_after_error(x, how):
    model = small_net().eval()
    y0, state0 = model(x).detach(), state_copy(model)
    pans = [("1", 0), ("4", 3)]
    means = {("1", 0): 0.25, ("4", 3): -1.5}
    with pytest.raises(Boom):
        with ablate(model, _table(pans), how, means):
            assert not torch.equal(model(x), y0)  # the ablation is in effect
            raise Boom
    assert n_hooks(model) == 0
    assert_same_state(model, state0)
    assert torch.equal(model(x), y0)


def _table(pairs) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["layer", "channel"])


def one_conv() -> nn.Module:
    """A 5×5 conv with padding 2, stride 1: two band rows/cols on each side."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 5, padding=2)).eval()


def test_border_ablation_is_mask_plus_replacement(x):
    model = one_conv()
    with torch.no_grad():
        ref = model[0](x)  # ground truth: the conv output, no hook
        with ablate(model, _table([("0", 1)]), "border", {("0", 1): 0.75}):
            y = model(x)
    band = torch.zeros(10, 12, dtype=torch.bool)
    band[:2, :] = band[-2:, :] = band[:, :2] = band[:, -2:] = True
    assert torch.all(y[:, 1][:, band] == 0.75)  # band rows/cols: exactly the mean
    assert torch.equal(y[:, 1][:, ~band], ref[:, 1][:, ~band])  # interior untouched
    others = [0, 2, 3]
    assert torch.equal(y[:, others], ref[:, others])  # other channels bit-identical


def test_mean_ablation_makes_whole_channel_constant(x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    with torch.no_grad():
        c1 = model[0](x)
        with ablate(model, _table([("0", 2)]), "mean", {("0", 2): -0.5}):
            y = model(x)
            hooked_c1 = []
            with hooks(forward=[(model[0], lambda m, i, o: hooked_c1.append(o))]):
                model(x)
        expected_c1 = c1.clone()
        expected_c1[:, 2] = -0.5
        expected = model[2](model[1](expected_c1))
    assert torch.all(hooked_c1[0][:, 2] == -0.5)
    assert torch.equal(hooked_c1[0][:, [0, 1, 3]], c1[:, [0, 1, 3]])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert n_hooks(model) == 0
