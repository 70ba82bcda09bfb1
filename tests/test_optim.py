import pytest
import torch
from torch import nn

from vjepa_adapt.train.optim import (
    apply_schedule,
    build_param_groups,
    freeze_module,
    is_no_decay,
    set_encoder_trainable,
)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)


class TinyEncoder(nn.Module):
    """Same attribute layout as HF VJEPA2Encoder: embeddings, layer (ModuleList), layernorm."""

    def __init__(self, d: int = 4, n: int = 3) -> None:
        super().__init__()
        self.embeddings = nn.Linear(d, d)
        self.layer = nn.ModuleList([Block(d) for _ in range(n)])
        self.layernorm = nn.LayerNorm(d)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = TinyEncoder()
        self.head = nn.Linear(4, 3)


def _group_of(groups, name):
    return next(g for g in groups if name in g["names"])


def test_no_decay_rule():
    assert is_no_decay("fc.bias", torch.zeros(3))
    assert is_no_decay("norm1.weight", torch.zeros(3))
    assert is_no_decay("encoder.layernorm.weight", torch.zeros(3))
    assert is_no_decay("scale", torch.zeros(()))
    assert not is_no_decay("fc.weight", torch.zeros(3, 3))
    assert is_no_decay("attn.q_norm.weight", torch.zeros(3, 3))


def test_groups_cover_all_params_with_multipliers_and_no_decay():
    m = Model()
    for p in m.encoder.layer[0].parameters():
        p.requires_grad_(False)  # frozen params must still be grouped
    groups = build_param_groups(m.named_parameters(), base_lr=1e-3, weight_decay=0.05, rules=[("head.", 10.0, 0.0)])
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    enc_w = _group_of(groups, "encoder.layer.0.fc.weight")
    assert enc_w["lr"] == pytest.approx(1e-3) and enc_w["weight_decay"] == pytest.approx(0.05)
    for n in ("encoder.layer.0.fc.bias", "encoder.layer.1.norm1.weight", "encoder.layernorm.bias"):
        g = _group_of(groups, n)
        assert g["weight_decay"] == 0.0 and g["wd_mult"] == 0.0 and g["lr_mult"] == 1.0
    head_w = _group_of(groups, "head.weight")
    assert head_w["lr"] == pytest.approx(1e-2) and head_w["weight_decay"] == 0.0 and head_w["lr_mult"] == 10.0
    assert head_w["group_name"] == "head." and enc_w["group_name"] == "default"
    assert _group_of(groups, "head.bias")["group_name"] == "head./no_decay"


def test_first_matching_rule_wins_and_regex():
    m = Model()
    rules = [(r"encoder\.layer\.[01]\.", 0.5, 2.0), ("encoder.", 0.1, 1.0)]
    groups = build_param_groups(m.named_parameters(), 1.0, 0.1, rules)
    assert _group_of(groups, "encoder.layer.1.fc.weight")["lr_mult"] == 0.5
    assert _group_of(groups, "encoder.layer.1.fc.weight")["weight_decay"] == pytest.approx(0.2)
    assert _group_of(groups, "encoder.layer.2.fc.weight")["lr_mult"] == 0.1
    assert _group_of(groups, "head.weight")["lr_mult"] == 1.0
    with pytest.raises(ValueError):
        build_param_groups(m.named_parameters(), 1.0, 0.1, [("encoder.[", 1.0, 1.0)])


def test_tied_params_kept_once():
    a = nn.Linear(2, 2)
    named = [("a.weight", a.weight), ("b.weight", a.weight), ("a.bias", a.bias)]
    groups = build_param_groups(named, 1.0, 0.1)
    assert sum(len(g["params"]) for g in groups) == 2


def test_apply_schedule_sets_multiplied_values():
    m = Model()
    groups = build_param_groups(m.named_parameters(), 1.0, 1.0, rules=[("head.", 10.0, 0.5)])
    opt = torch.optim.AdamW(groups)
    apply_schedule(opt, lr=2e-4, wd=0.04)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2e-4 * g["lr_mult"])
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_mult"])
    head_w = next(g for g in opt.param_groups if "head.weight" in g["names"])
    assert head_w["lr"] == pytest.approx(2e-3) and head_w["weight_decay"] == pytest.approx(0.02)


def _train_step(m: Model, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    x = torch.randn(5, 4)
    m.head(m.encoder.layernorm(m.encoder.layer[1].fc(m.encoder.layer[0].fc(m.encoder.embeddings(x))))).pow(2).mean().backward()
    opt.step()


def test_adamw_skips_frozen_then_trains_after_unfreeze():
    m = Model()
    opt = torch.optim.AdamW(build_param_groups(m.named_parameters(), 1e-2, 0.5))
    set_encoder_trainable(m.encoder, train_below=1)  # embeddings + block 0 (+ norms) train; block 1, 2 frozen
    frozen_w = m.encoder.layer[1].fc.weight
    before = frozen_w.detach().clone()
    trained_before = m.encoder.layer[0].fc.weight.detach().clone()
    for _ in range(3):
        _train_step(m, opt)
    # weight decay 0.5 would have shrunk it if AdamW touched a grad-None parameter
    assert torch.equal(frozen_w, before)
    assert frozen_w not in opt.state or len(opt.state[frozen_w]) == 0
    assert not torch.equal(m.encoder.layer[0].fc.weight, trained_before)
    set_encoder_trainable(m.encoder, train_below=2)  # later stage: the same optimizer now trains block 1
    _train_step(m, opt)
    assert not torch.equal(frozen_w, before)


def test_refreezing_clears_grad_so_adamw_stops_moving_it():
    m = Model()
    opt = torch.optim.AdamW(build_param_groups(m.named_parameters(), 1e-2, 0.5))
    _train_step(m, opt)  # every parameter now has AdamW state and a grad
    set_encoder_trainable(m.encoder, freeze_below=3)
    assert m.encoder.layer[0].fc.weight.grad is None
    w = m.encoder.layer[0].fc.weight.detach().clone()
    opt.step()  # a stale grad + momentum would otherwise keep moving it
    assert torch.equal(m.encoder.layer[0].fc.weight, w)


def test_set_trainable_freeze_below_keeps_norms():
    enc = TinyEncoder()
    counts = set_encoder_trainable(enc, freeze_below=2)
    req = {n: p.requires_grad for n, p in enc.named_parameters()}
    assert not req["embeddings.weight"] and not req["layer.0.fc.weight"] and not req["layer.1.fc.bias"]
    assert req["layer.0.norm1.weight"] and req["layer.1.norm1.bias"]  # norms stay trainable
    assert req["layer.2.fc.weight"] and req["layernorm.weight"]
    assert counts["frozen_params"] == 20 + 2 * 20  # embeddings Linear(4,4) + two block fc
    assert counts["trainable_params"] == sum(p.numel() for p in enc.parameters()) - 60


def test_set_trainable_prefix_and_full_freeze():
    enc = TinyEncoder()
    set_encoder_trainable(enc, train_below=2, keep_norms_trainable=False)
    req = {n: p.requires_grad for n, p in enc.named_parameters()}
    assert req["embeddings.weight"] and req["layer.1.fc.weight"] and req["layer.1.norm1.weight"]
    assert not req["layer.2.fc.weight"] and not req["layer.2.norm1.weight"] and not req["layernorm.weight"]
    counts = set_encoder_trainable(enc, train_below=0, keep_norms_trainable=False)
    assert counts["trainable_params"] == 0
    counts = set_encoder_trainable(enc)
    assert counts["frozen_params"] == 0
    assert set_encoder_trainable(enc, freeze_below=0)["frozen_params"] == 0
    with pytest.raises(ValueError):
        set_encoder_trainable(enc, freeze_below=1, train_below=1)
    with pytest.raises(ValueError):
        set_encoder_trainable(enc, freeze_below=4)
    with pytest.raises(ValueError):
        set_encoder_trainable(enc, layers_attr="blocks")


def test_freeze_module():
    head = nn.Linear(2, 3)
    head.weight.grad = torch.ones(3, 2)
    assert freeze_module(head) == 9
    assert not any(p.requires_grad for p in head.parameters()) and head.weight.grad is None


def test_optimizer_state_dict_roundtrip_keeps_group_keys():
    m = Model()
    opt = torch.optim.AdamW(build_param_groups(m.named_parameters(), 1e-3, 0.1, [("head.", 10.0, 0.0)]))
    _train_step(m, opt)
    sd = opt.state_dict()
    opt2 = torch.optim.AdamW(build_param_groups(m.named_parameters(), 1e-3, 0.1, [("head.", 10.0, 0.0)]))
    opt2.load_state_dict(sd)
    assert [g["lr_mult"] for g in opt2.param_groups] == [g["lr_mult"] for g in opt.param_groups]
    assert [g["names"] for g in opt2.param_groups] == [g["names"] for g in opt.param_groups]
