import math

import pytest
import torch

from vjepa_adapt.train.losses import jepa_l1, jepa_loss, motion_aux_loss


def test_jepa_l1_zero_for_equal_and_hand_value():
    x = torch.randn(2, 3, 4)
    assert jepa_l1(x, x.clone()).item() == 0.0
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    target = torch.tensor([[[0.0, 4.0], [3.0, 0.0]]])
    # |1|+|-2|+|0|+|4| = 7 over 4 entries
    assert jepa_l1(pred, target).item() == pytest.approx(7 / 4)


def test_jepa_l1_gradient_only_to_pred():
    pred = torch.tensor([[[1.0, -1.0]]], requires_grad=True)
    target = torch.tensor([[[0.0, 0.0]]], requires_grad=True)
    jepa_l1(pred, target).backward()
    assert pred.grad.tolist() == [[[0.5, -0.5]]]
    assert target.grad is None


def test_jepa_l1_shape_mismatch():
    with pytest.raises(ValueError):
        jepa_l1(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))


def test_jepa_loss_averages_generators():
    p1, t1 = torch.ones(1, 2, 2), torch.zeros(1, 2, 2)  # L1 = 1
    p2, t2 = torch.full((1, 5, 2), 3.0), torch.zeros(1, 5, 2)  # L1 = 3 (different N is fine)
    assert jepa_loss([p1, p2], [t1, t2]).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        jepa_loss([p1], [])


def test_motion_aux_hand_value():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # row 2: p(class 0) = 3/4
    labels = torch.tensor([0, 0])
    reg_pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    reg_target = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    total, parts = motion_aux_loss(logits, labels, reg_pred, reg_target, weight=0.1)
    ce = (math.log(2.0) + -math.log(0.75)) / 2
    mse = (1 + 4 + 0 + 4) / 4
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["mse"].item() == pytest.approx(mse)
    assert total.item() == pytest.approx(0.1 * (ce + mse), rel=1e-6)
    total2, _ = motion_aux_loss(logits, labels, reg_pred, reg_target, weight=1.0, ce_weight=2.0, mse_weight=0.0)
    assert total2.item() == pytest.approx(2 * ce, rel=1e-6)


def test_motion_aux_ignores_unlabelled_clips():
    logits = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    reg = torch.zeros(2, 3)
    _, parts = motion_aux_loss(logits, torch.tensor([0, -1]), reg, reg)
    assert parts["ce"].item() == pytest.approx(math.log(2.0))
    assert parts["n_labeled"].item() == 1


def test_motion_aux_all_unlabelled_is_zero_not_nan_and_keeps_graph():
    logits = torch.randn(3, 4, requires_grad=True)
    reg_pred = torch.randn(3, 2, requires_grad=True)
    total, parts = motion_aux_loss(logits, torch.full((3,), -1), reg_pred, torch.zeros(3, 2))
    assert parts["ce"].item() == 0.0 and torch.isfinite(total)
    total.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)
    assert reg_pred.grad is not None and reg_pred.grad.abs().sum() > 0


def test_motion_aux_reg_valid_excludes_rows_even_nan():
    logits = torch.zeros(2, 2)
    labels = torch.tensor([0, 1])
    reg_pred = torch.tensor([[1.0], [0.0]], requires_grad=True)
    reg_target = torch.tensor([[0.0], [float("nan")]])
    total, parts = motion_aux_loss(logits, labels, reg_pred, reg_target, reg_valid=torch.tensor([True, False]))
    assert parts["mse"].item() == pytest.approx(1.0)
    total.backward()
    assert torch.isfinite(reg_pred.grad).all()


def test_motion_aux_rejects_bad_labels():
    with pytest.raises(ValueError):
        motion_aux_loss(torch.zeros(1, 2), torch.tensor([2]), torch.zeros(1, 1), torch.zeros(1, 1))
