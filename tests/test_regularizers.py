import math

import pytest
import torch
from torch import nn

from vjepa_adapt.train.regularizers import (
    SPD,
    add_l2_anchor_grad_,
    deviation_norms,
    ema_update,
    relative_drift,
    snapshot,
    spd_step,
)


def _pair():
    torch.manual_seed(0)
    return nn.Linear(3, 2), nn.Linear(3, 2)


def test_ema_momentum_zero_copies_one_freezes_half_averages():
    teacher, student = _pair()
    t0 = snapshot(teacher.parameters())
    ema_update(teacher.parameters(), student.parameters(), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), t0))
    ema_update(teacher.parameters(), student.parameters(), 0.5)
    for t, a, s in zip(teacher.parameters(), t0, student.parameters()):
        assert torch.allclose(t, 0.5 * a + 0.5 * s)
    ema_update(teacher.parameters(), student.parameters(), 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def test_ema_hand_value_and_validation():
    t = [torch.tensor([1.0, 2.0])]
    s = [torch.tensor([3.0, 6.0])]
    ema_update(t, s, 0.75)  # 0.75*[1,2] + 0.25*[3,6] = [1.5, 3]
    assert t[0].tolist() == [1.5, 3.0]
    with pytest.raises(ValueError):
        ema_update(t, s, 1.5)
    with pytest.raises(ValueError):
        ema_update(t, [torch.zeros(3)], 0.5)
    ema_update([], [], 0.5)  # empty lists are a no-op


def test_snapshot_is_detached_copy_same_device():
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    (a,) = snapshot([p])
    assert not a.requires_grad and a.device == p.device
    with torch.no_grad():
        p.add_(1.0)
    assert a.tolist() == [1.0, 2.0]


def test_l2_anchor_value_and_gradient_by_hand():
    w = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    b = nn.Parameter(torch.tensor([0.5]))
    anchors = [torch.tensor([[1.0, 0.0], [3.0, 1.0]]), torch.tensor([0.0])]
    lam = 0.1
    value = add_l2_anchor_grad_([w, b], anchors, lam)
    # ||w - w0||^2 = 0 + 4 + 0 + 9 = 13; ||b - b0||^2 = 0.25 -> 0.1 * 13.25
    assert value.item() == pytest.approx(1.325)
    assert torch.allclose(w.grad, torch.tensor([[0.0, 0.4], [0.0, 0.6]]))  # 2 lam (w - w0)
    assert torch.allclose(b.grad, torch.tensor([0.1]))


def test_l2_anchor_at_anchor_is_zero_with_finite_zero_grad():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    value = add_l2_anchor_grad_([w], snapshot([w]), 5.0)
    assert value.item() == 0.0 and torch.equal(w.grad, torch.zeros(2))
    assert add_l2_anchor_grad_([], [], 1.0).item() == 0.0


def test_add_l2_anchor_grad_adds_to_existing_grads():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    v = nn.Parameter(torch.tensor([3.0]))
    anchors = [torch.tensor([0.0, 1.0]), torch.tensor([1.0])]
    w.grad = torch.tensor([10.0, 10.0])  # v.grad stays None
    value = add_l2_anchor_grad_([w, v], anchors, 0.5)
    assert value.item() == pytest.approx(0.5 * (1 + 1 + 4))
    assert w.grad.tolist() == [11.0, 11.0]  # + 2 * 0.5 * [1, 1]
    assert v.grad.tolist() == [2.0]


def test_relative_drift_and_deviation_norms():
    p = [torch.tensor([3.0, 4.0]), torch.tensor([1.0]), torch.tensor([0.0, 0.0])]
    a = [torch.tensor([0.0, 2.0]), torch.tensor([1.0]), torch.tensor([0.0, 0.0])]
    # ||(3,2)|| / ||(0,2)|| = sqrt(13)/2; 0/1; 0/0 -> nan
    drift = relative_drift(p, a)
    assert drift[0] == pytest.approx(math.sqrt(13) / 2)
    assert drift[1] == 0.0
    assert math.isnan(drift[2])
    assert deviation_norms(p, a).tolist() == pytest.approx([math.sqrt(13), 0.0, 0.0])


def test_spd_moving_away_is_pulled_back_by_exact_amount():
    w0 = torch.tensor([0.0, 0.0])
    w = torch.tensor([6.0, 8.0])  # after the optimizer step: ||w - w0|| = 10
    prev = [3.0]  # before the step: ||w_prev - w0|| = 3
    r = spd_step([w], [w0], prev, lam=0.5)
    # r = (10 - 3) / 10 = 0.7; w <- w - 0.5 * 0.7 * w = 0.65 * w
    assert r.tolist() == pytest.approx([0.7])
    assert w.tolist() == pytest.approx([3.9, 5.2])


def test_spd_moving_toward_is_untouched_and_ratio_clipped():
    w0 = torch.tensor([1.0, 1.0])
    w = torch.tensor([4.0, 5.0])  # ||w - w0|| = 5
    r = spd_step([w], [w0], [10.0], lam=0.5)  # was 10 away: moved toward
    assert r.tolist() == [0.0] and w.tolist() == [4.0, 5.0]
    # From exactly the anchor (prev 0) any move gives r = 1: w <- w - lam (w - w0)
    r = spd_step([w], [w0], [0.0], lam=0.25)
    assert r.tolist() == [1.0] and w.tolist() == pytest.approx([3.25, 4.0])
    # At the anchor: nothing to project, no division by zero
    z = torch.tensor([1.0, 1.0])
    assert spd_step([z], [w0], [0.0], lam=1.0).tolist() == [0.0] and z.tolist() == [1.0, 1.0]


def test_spd_stateful_around_optimizer_step():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
    anchors = snapshot(lin.parameters())
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]) * 0.6)  # 2 away from the anchor: ||0.4 w0|| = 2
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    spd = SPD(list(lin.parameters()), anchors, lam=0.5)
    with pytest.raises(RuntimeError):
        spd.after_step()
    # w = 0.6 w0; a gradient of 0.2 w0 moves it to 0.4 w0, further from w0
    lin.weight.grad = torch.tensor([[0.6, 0.8]])
    spd.before_step()
    opt.step()  # w = [1.2, 1.6], ||w - w0|| = ||(-1.8, -2.4)|| = 3
    r = spd.after_step()
    # r = (3 - 2) / 3 = 1/3; w <- w - 0.5/3 * (w - w0) = [1.2, 1.6] + (1/6) * [1.8, 2.4] = [1.5, 2.0]
    assert r.tolist() == pytest.approx([1 / 3])
    assert lin.weight[0].tolist() == pytest.approx([1.5, 2.0])


def test_spd_validation():
    with pytest.raises(ValueError):
        SPD([torch.zeros(2)], [torch.zeros(2)], lam=-1.0)
    with pytest.raises(ValueError):
        spd_step([torch.zeros(2)], [torch.zeros(2)], [1.0, 2.0], lam=0.1)
