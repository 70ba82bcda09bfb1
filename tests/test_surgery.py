"""Ch 11b surgery on the one trainer: stage semantics (prefix fraction, per-stage warmup, Adam state of a
late-unfrozen block, final norm), the mixture sampler, MGMAE masks from each sample's flow, SPD by hand,
the five recipe switches, a 3-stage run (log lines, per-block drift), bit-exact resume across a stage
boundary, 2 gloo ranks through a stage change, and the surgery arms in the graph."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import write_video
from test_train import DATA, MASKING, TINY, _moving_square

from vjepa_adapt.config import (
    MaskingConfig,
    Stage,
    SurgeryConfig,
    TrainConfig,
    load_config,
)
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import (
    STREAMS,
    AuxTargets,
    ClipDataset,
    Collate,
    MixtureBatchSampler,
    Stream,
    stream_counts,
)
from vjepa_adapt.errors import ConfigError
from vjepa_adapt.masking import (
    MaskSpec,
    MultiblockMasker,
    TokenFlow,
    flow_to_token_units,
    token_flow,
)
from vjepa_adapt.models.heads import MotionAuxHead
from vjepa_adapt.models.vjepa import build_model
from vjepa_adapt.stages.surgery import (
    pooled_mixture,
    surgery_head_train_config,
    surgery_train_config,
)
from vjepa_adapt.train import checkpoint as ckpt
from vjepa_adapt.train import loop
from vjepa_adapt.train.optim import prefix_blocks, set_encoder_trainable
from vjepa_adapt.train.regularizers import SPD
from vjepa_adapt.train.schedules import staged_warmup_cosine, warmup_cosine

TINY4 = {**TINY, "num_hidden_layers": 4}  # 4 blocks: fractions 0.25 / 0.5 / 0.75 train 1 / 2 / 3 of them


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny", crop_size=32, frames_per_clip=8, **TINY4)


# ------------------------------------------------------------------------------------ stage semantics


def test_unfreeze_fraction_is_a_share_of_the_blocks_rounded_up():
    # the decision: ceil(fraction × depth) leading blocks; 0.25 of 40 = blocks 0-9 (not the reference's 0-10)
    assert [prefix_blocks(f, 40) for f in (0.25, 0.5, 0.75, 1.0, 0.0)] == [10, 20, 30, 40, 0]
    assert prefix_blocks(0.275, 40) == 11  # the reference's "blocks 0-10"
    assert prefix_blocks(0.01, 40) == 1 and prefix_blocks(0.3, 6) == 2  # any fraction > 0 trains a block
    assert prefix_blocks(0.7, 10) == 7  # 0.7 × 10 = 7.000000000000001 in floats: still 7
    with pytest.raises(ValueError):
        prefix_blocks(1.5, 4)


def test_stage_sets_the_trainable_prefix_and_the_final_norm_trains_only_with_all_blocks():
    model = _model()
    student = loop.Student(model, None, "jepa")
    tcfg = TrainConfig(steps=4, warmup_steps=0, stages=[Stage(name="a", steps=2, unfreeze_fraction=0.25),
                                                        Stage(name="b", steps=2, unfreeze_fraction=1.0)])
    loop.set_stage_trainable(student, tcfg, tcfg.stages[0])
    req = {n: p.requires_grad for n, p in model.encoder.named_parameters()}
    assert req["layer.0.mlp.fc1.weight"] and req["layer.0.norm1.weight"] and req["embeddings.patch_embeddings.proj.weight"]
    assert not any(v for n, v in req.items() if n.startswith(("layer.1.", "layer.2.", "layer.3.")))
    assert not req["layernorm.weight"]  # block norms follow their block; the final norm waits for the whole encoder
    assert all(p.requires_grad for p in model.predictor.parameters())
    loop.set_stage_trainable(student, tcfg, tcfg.stages[1])
    assert all(p.requires_grad for p in model.encoder.parameters())  # final norm included
    # the same rule in set_encoder_trainable: depth - 1 blocks leave the final norm frozen
    set_encoder_trainable(model.encoder, train_below=3, keep_norms_trainable=False)
    assert not model.encoder.layernorm.weight.requires_grad


def test_lr_rewarms_at_every_stage_start():
    # hand values: stage 1 = 4 steps with warmup 2, stage 2 = 3 steps with train.warmup_steps = 1
    lr = [staged_warmup_cosine(s, [(4, 2), (3, 1)], base=1.0, final=0.0) for s in range(8)]
    assert lr[:4] == pytest.approx([0.0, 0.5, 1.0, 0.5])  # warmup, then cosine 1 -> 0 over 2 steps (midpoint 0.5)
    assert lr[4:7] == pytest.approx([0.0, 1.0, 0.5])  # re-warms from 0, back at base: not the decayed tail
    assert lr[7] == 0.0  # past the last stage: final
    tcfg = TrainConfig(steps=7, warmup_steps=1, lr=1.0, final_lr=0.0,
                       stages=[Stage(name="a", steps=4, warmup_steps=2), Stage(name="b", steps=3)])
    assert [loop.stage_lr(s, tcfg) for s in range(7)] == pytest.approx(lr[:7])
    # without stages: exactly the one warmup + cosine of the whole run (pretrain is unchanged)
    plain = TrainConfig(steps=10, warmup_steps=3, lr=2e-4, final_lr=1e-6)
    assert [loop.stage_lr(s, plain) for s in range(10)] == [warmup_cosine(s, 10, 3, 2e-4, final=1e-6)
                                                              for s in range(10)]
    with pytest.raises(ValueError, match="warmup_steps"):
        Stage(name="a", steps=2, warmup_steps=3)
    with pytest.raises(ValueError, match="unique"):
        TrainConfig(steps=4, warmup_steps=0, stages=[Stage(name="a", steps=2), Stage(name="a", steps=2)])


# ------------------------------------------------------------------------------------ SPD by hand


def test_spd_on_a_two_parameter_toy_by_hand():
    """W0 = (1, 2); W_prev = (1.5, 3); an SGD step (lr 1) with grads (-0.5, 0.5) moves a to 2.0 (away from
    W0: ‖W−W0‖ 0.5 -> 1.0) and b to 2.5 (toward W0: 1.0 -> 0.5). λ = 0.5:
    a: r = clip((1.0 − 0.5) / 1.0, 0, 1) = 0.5 -> a = 2.0 − 0.5·0.5·(2.0 − 1.0) = 1.75;  b: r = clip(−1) = 0 -> 2.5."""
    a, b = torch.nn.Parameter(torch.tensor([1.5])), torch.nn.Parameter(torch.tensor([3.0]))
    anchors = [torch.tensor([1.0]), torch.tensor([2.0])]
    opt = torch.optim.SGD([a, b], lr=1.0)
    a.grad, b.grad = torch.tensor([-0.5]), torch.tensor([0.5])
    spd = SPD([a, b], anchors, lam=0.5)
    spd.before_step()
    opt.step()
    assert (a.item(), b.item()) == (2.0, 2.5)  # the plain step
    ratio = spd.after_step()
    assert ratio.tolist() == [0.5, 0.0]
    assert (a.item(), b.item()) == (1.75, 2.5)


# ------------------------------------------------------------------------------------ mixture sampler


def test_stream_counts_hand_values():
    assert stream_counts({"agent": 0.9, "raw": 0.1}, 10) == {"raw": 1, "agent": 9}
    assert stream_counts({"interaction": 0.85, "raw": 0.15}, 8) == {"raw": 1, "interaction": 7}  # 1.2 -> 1
    assert stream_counts({"interaction": 0.85, "raw": 0.15}, 16) == {"raw": 2, "interaction": 14}  # 2.4 -> 2
    assert stream_counts({"interaction": 0.85, "raw": 0.15}, 24) == {"raw": 4, "interaction": 20}  # 3.6 -> 4
    assert stream_counts({"layout": 1.0}, 7) == {"layout": 7}
    assert stream_counts({"layout": 0.5, "agent": 0.25, "interaction": 0.25}, 0) == {"layout": 0, "agent": 0,
                                                                                      "interaction": 0}


SCHEDULE = [(40, {"layout": 1.0}), (50, {"agent": 0.9, "raw": 0.1}), (60, {"interaction": 0.85, "raw": 0.15})]
SIZES = {"raw": 13, "layout": 7, "agent": 5, "interaction": 11}


def test_mixture_frequencies_match_each_stage_and_every_batch_holds_its_share():
    s = MixtureBatchSampler(SIZES, SCHEDULE, batch_size=8, seed=3, start_step=0, total_steps=150)
    keys = list(s)
    start = 0
    for steps, mix in SCHEDULE:
        stage = keys[start:start + steps]
        got = Counter(k[0] for batch in stage for k in batch)
        n = steps * 8
        for name, share in mix.items():
            assert abs(got[name] / n - share) <= 1 / n, (name, got)  # exact up to one sample over the stage
        for batch in stage:  # and per batch: floor or ceil of share × 8
            c = Counter(k[0] for k in batch)
            for name, share in mix.items():
                assert math.floor(share * 8) <= c[name] <= math.ceil(share * 8)
        assert set(got) == set(mix)
        start += steps
    assert all(k[2] == step for step, batch in enumerate(keys) for k in batch)
    # each stream walks through its clips epoch by epoch: raw is used in stages 2 and 3 (40 + 72 draws) and
    # continues its permutations across the stage change: every run of 13 draws is each raw clip once
    pos = [p for step in range(150) for n, p in s.slots_for_step(step) if n == "raw"]
    assert sorted(pos) == list(range(40 + 72))  # consecutive stream positions, none skipped or repeated
    by_pos = {p: s._stream_index("raw", p) for p in pos}
    assert all(sorted(by_pos[p] for p in range(e * 13, (e + 1) * 13)) == list(range(13)) for e in range(112 // 13))


def test_mixture_keys_are_a_pure_function_of_seed_and_step():
    full = list(MixtureBatchSampler(SIZES, SCHEDULE, 8, seed=3, start_step=0, total_steps=150))
    resumed = list(MixtureBatchSampler(SIZES, SCHEDULE, 8, seed=3, start_step=77, total_steps=150))
    assert resumed == full[77:]  # a resumed run asks for step 77 and gets the same keys: nothing replayed
    other = list(MixtureBatchSampler(SIZES, SCHEDULE, 8, seed=4, start_step=0, total_steps=150))
    assert other != full
    # two ranks split one global batch of 16: disjoint stream positions, the same stream counts as one rank of 16
    ranks = [MixtureBatchSampler(SIZES, SCHEDULE, 8, seed=3, start_step=0, total_steps=150, rank=r, world_size=2)
             for r in range(2)]
    one = MixtureBatchSampler(SIZES, SCHEDULE, 16, seed=3, start_step=0, total_steps=150)
    for step in (0, 45, 120):
        slots = ranks[0].slots_for_step(step)
        assert slots == one.slots_for_step(step) and len(set(slots)) == 16
        both = ranks[0].keys_for_step(step) + ranks[1].keys_for_step(step)
        assert Counter(k[0] for k in both) == Counter(k[0] for k in one.keys_for_step(step))
    with pytest.raises(ValueError, match="interaction"):
        MixtureBatchSampler({**SIZES, "interaction": 0}, SCHEDULE, 8, seed=3, start_step=0, total_steps=150)


# ------------------------------------------------------------------------------------ MGMAE


def _panning(n_frames: int = 8, size: int = 64, px_per_frame: int = 4, seed: int = 0) -> np.ndarray:
    """A smooth random texture panning right by ``px_per_frame`` each frame (uniform flow)."""
    import cv2

    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.integers(0, 255, (size, size * 3, 3), dtype=np.uint8), (0, 0), 1.5)
    return np.stack([np.ascontiguousarray(tex[:, size - px_per_frame * t:2 * size - px_per_frame * t])
                     for t in range(n_frames)])


def test_token_flow_of_a_known_translation_and_its_mirror():
    frames = _panning()  # 4 px / frame right; tubelet 2 -> 8 px per token step; patch 8 -> 1 token per step
    flow = token_flow(frames, (4, 8, 8), tubelet_size=2)
    assert flow.shape == (4, 8, 8, 2)
    inner = flow[:3, 2:6, 2:6]  # away from the borders the texture enters at
    assert inner[..., 0].mean() == pytest.approx(1.0, abs=0.1) and inner[..., 1].abs().mean() < 0.1
    mirrored = token_flow(np.ascontiguousarray(frames[:, :, ::-1]), (4, 8, 8), tubelet_size=2)
    assert mirrored[:3, 2:6, 2:6, 0].mean() == pytest.approx(-1.0, abs=0.1)
    # pixel units at another resolution: 16 px right on a 32 px map = half the map = 4 tokens of an 8-wide grid
    assert flow_to_token_units(np.full((1, 32, 32, 2), [16.0, 0.0], np.float32), (2, 8, 8))[0, 0, 0].tolist() \
        == [4.0, 0.0]


def _mean_col(mask_t: torch.Tensor) -> float:
    return float(torch.nonzero(mask_t, as_tuple=True)[1].float().mean())


def test_mgmae_masks_follow_each_samples_flow_and_mirror_when_flipped(tmp_path):
    path = write_video(tmp_path / "pan.mp4", _panning(n_frames=8, size=64, px_per_frame=4), fps=10)
    grid = (4, 8, 8)
    masker = MultiblockMasker(grid=grid, specs=(MaskSpec(num_blocks=1, spatial_scale=0.06, aspect_ratio=(1, 1)),),
                              seed=0)
    cols = {}
    for flip in (0.0, 1.0):
        ds = ClipDataset([Clip("pan", str(path), "v")], num_frames=8, size=64, seed=0, train=True, flip_prob=flip,
                         crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flow=TokenFlow(grid, 2))
        items = [ds[(0, s)] for s in range(6)]
        assert all(it["flipped"] == bool(flip) for it in items)
        batch = Collate(masker)(items)  # the collate hands the stacked flows to the masker
        tgt = torch.zeros(6, math.prod(grid), dtype=torch.bool).scatter_(1, batch["masks"][0].target_ids, True)
        tgt = tgt.reshape(6, *grid)
        cols[flip] = np.array([[_mean_col(tgt[b, t]) for t in range(4)] for b in range(6)])  # (B, T')
    right, left = np.diff(cols[0.0], axis=1), np.diff(cols[1.0], axis=1)
    assert (right >= 0).all() and right.mean() > 0.6  # carried right along the pan (clipped at the edge)
    assert (left <= 0).all() and left.mean() < -0.6  # the flipped sample: mirrored, carried left
    # without flow the same masker draws static multiblock masks: the raw path is unchanged
    plain = ClipDataset([Clip("pan", str(path), "v")], num_frames=8, size=64, seed=0, train=True)
    assert "flow" not in plain[(0, 0)]


# ------------------------------------------------------------------------------------ the recipe switches


def _train_cfg(**surgery):
    stages = [Stage(name="layout", steps=2, unfreeze_fraction=0.25, mixture={"layout": 1.0}),
              Stage(name="agent", steps=2, unfreeze_fraction=0.5, mixture={"agent": 0.75, "raw": 0.25}),
              Stage(name="interaction", steps=2, unfreeze_fraction=0.75, mixture={"interaction": 0.75, "raw": 0.25})]
    return TrainConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=100, checkpoint_every=3,
                       keep_last=3, ema_momentum=(0.9, 0.9), surgery=SurgeryConfig(stages=stages, lpft_steps=1, **surgery))


def _flat(tcfg: TrainConfig, mask: MaskingConfig) -> dict:
    return {**{f"train.{k}": v for k, v in tcfg.model_dump().items()},
            **{f"masking.{k}": v for k, v in mask.model_dump().items()}}


def test_each_recipe_switch_changes_exactly_what_it_should():
    train = _train_cfg()
    on = _flat(*surgery_train_config(train, MASKING))
    assert on["train.teacher"] == "frozen" and on["train.spd"] == 0.5 and on["masking.kind"] == "motion_guided"
    assert [s["name"] for s in on["train.stages"]] == ["lpft", "layout", "agent", "interaction"]
    assert on["train.stages"][0]["unfreeze_fraction"] == 0 and on["train.stages"][0]["mixture"] == {"layout": 1.0}
    assert on["train.steps"] == 7 and on["train.mode"] == "jepa"
    expected = {"salt": {"train.teacher"}, "lpft": {"train.stages", "train.steps"}, "spd": {"train.spd"},
                "clear": {"train.stages"}, "mgmae": {"masking.kind"}}
    for switch, fields in expected.items():
        off = _flat(*surgery_train_config(train, MASKING, off=[switch]))
        assert {k for k in on if on[k] != off[k]} == fields, switch
        configured_off = _flat(*surgery_train_config(_train_cfg(**{switch: False}), MASKING))
        assert {k for k in on if on[k] != configured_off[k] and k != "train.surgery"} == fields, switch
    off = {s: _flat(*surgery_train_config(train, MASKING, off=[s])) for s in expected}
    assert off["salt"]["train.teacher"] == "ema" and off["spd"]["train.spd"] == 0.0
    assert off["mgmae"]["masking.kind"] == "multiblock" and off["lpft"]["train.steps"] == 6
    assert [s["name"] for s in off["lpft"]["train.stages"]] == ["layout", "agent", "interaction"]
    # CLEAR off: only the mixtures change, the raw share goes to the stage's factor streams
    no_replay = off["clear"]["train.stages"]
    assert [s["mixture"] for s in no_replay] == [{"layout": 1.0}, {"layout": 1.0}, {"agent": 1.0},
                                                 {"interaction": 1.0}]
    assert [{k: v for k, v in s.items() if k != "mixture"} for s in no_replay] == \
        [{k: v for k, v in s.items() if k != "mixture"} for s in on["train.stages"]]
    with pytest.raises(ValueError, match="unknown recipe switch"):
        surgery_train_config(train, MASKING, off=["ema"])


def test_surgery_head_trains_the_head_on_the_pooled_factor_data():
    cfg = load_config(None)  # schema defaults: SPEC's stages
    tcfg = surgery_head_train_config(cfg)
    assert tcfg.mode == "head_only" and tcfg.steps == cfg.arms.head_only_steps and tcfg.lr == cfg.arms.head_only_lr
    (stage,) = tcfg.stages
    # default stages: lpft 20 + layout 60 on D_L, 60 on 90% D_A + 10% raw, 60 on 85% D_I + 15% raw (of 200 steps)
    assert stage.mixture == pytest.approx({"layout": 0.4, "agent": 0.27, "raw": 0.075, "interaction": 0.255})
    assert pooled_mixture([Stage(name="a", steps=1, mixture={"raw": 1.0}), Stage(name="b", steps=3,
                                                                                mixture={"agent": 1.0})]) == \
        {"raw": 0.25, "agent": 0.75}


def test_default_stages_follow_the_spec():
    s = SurgeryConfig()
    assert [(x.unfreeze_fraction, x.mixture) for x in s.stages] == [
        (0.25, {"layout": 1.0}), (0.5, {"agent": 0.9, "raw": 0.1}), (0.75, {"interaction": 0.85, "raw": 0.15})]
    assert s.salt and s.lpft and s.spd and s.clear and s.mgmae


# ------------------------------------------------------------------------------------ the trainer, 3 stages


def _aux(clips, seed: int):
    rng = np.random.default_rng(seed)
    labels = {c.clip_id: i % 2 for i, c in enumerate(clips)}
    reg = {c.clip_id: rng.normal(size=13).astype(np.float32) for c in clips}
    return AuxTargets(labels=labels, reg=reg, reg_flipped={k: -v for k, v in reg.items()},
                      label_flipped={k: 1 - v for k, v in labels.items()})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw clips (6 train, 2 val) and three small factor streams of 4 clips each, all 48x48, 12 frames."""
    folder = tmp_path_factory.mktemp("surgery_clips")
    raw = [Clip(f"c{i}", str(write_video(folder / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i))), f"v{i}")
           for i in range(8)]
    streams = {}
    for k, kind in enumerate(("layout", "agent", "interaction")):
        clips = []
        for i in range(4):
            frames = _moving_square(12, (0, 3, -3)[k] if i % 2 else (0, -3, 3)[k], 100 * (k + 1) + i)
            if kind == "agent":
                frames = (frames * 0.3).astype(np.uint8)
            clips.append(Clip(f"c{i}__{kind}", str(write_video(folder / f"{kind}{i}.mp4", frames)), f"v{i}"))
        streams[kind] = Stream(clips, _aux(clips, k + 1))
    return raw, _aux(raw, 0), streams


def _surgery(out, world, tcfg, masking, seed_model=0, num_workers=0):
    raw, aux, streams = world
    model = _model(seed_model)
    head = MotionAuxHead(32, 2, reg_dims=13)
    res = loop.train(tcfg=tcfg, data=DATA, masking=masking, model=model, head=head, train_clips=raw[:6],
                     val_clips=raw[6:], aux=aux, out_dir=out, seed=1, streams=streams, num_workers=num_workers)
    return res, model, head


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_three_stage_surgery_logs_its_blocks_and_drift_is_zero_above_the_prefix(tmp_path, world):
    tcfg, masking = surgery_train_config(_train_cfg(), MASKING)
    lines = _Lines()
    loop.log.addHandler(lines)
    try:
        res, model, _ = _surgery(tmp_path, world, tcfg, masking)
    finally:
        loop.log.removeHandler(lines)
    starts = [line for line in lines.lines if ": stage '" in line]
    assert len(starts) == 4
    assert "stage 'lpft'" in starts[0] and "encoder frozen (0 of 4 blocks)" in starts[0]
    assert "predictor trains; head trains" in starts[0]
    assert "stage 'layout'" in starts[1] and "blocks 0 of 4 + embeddings (final norm frozen)" in starts[1]
    assert "stage 'agent'" in starts[2] and "blocks 0-1 of 4" in starts[2] and "agent 75%, raw 25%" in starts[2]
    assert "stage 'interaction'" in starts[3] and "blocks 0-2 of 4" in starts[3]
    rows = {r["step"]: r for r in res.history}
    assert [rows[s]["stage"] for s in range(1, 8)] == ["lpft", "layout", "layout", "agent", "agent", "interaction",
                                                       "interaction"]
    # per-block drift at each stage's end: zero above the prefix, moved inside it
    for step, prefix in ((1, 0), (3, 1), (5, 2), (7, 3)):
        drift = rows[step]["drift_blocks"]
        assert drift[prefix:] == [0.0] * (4 - prefix), (step, drift)
        assert all(d > 0 for d in drift[:prefix]), (step, drift)
    # each stage re-warmed its lr from 0
    assert [rows[s]["lr"] for s in (1, 2, 4, 6)] == [0.0, 0.0, 0.0, 0.0] and rows[3]["lr"] > 0
    # SALT: the teacher stayed at the initial weights; the exported encoder (the student) is read back
    init = _model().encoder.state_dict()
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert all(torch.equal(v, init[k]) for k, v in state["teacher"].items())
    from vjepa_adapt.models.vjepa import load_model

    exported, _ = load_model(str(tmp_path / "final" / "encoder"))
    assert all(torch.equal(exported.encoder.state_dict()[k], v) for k, v in model.encoder.state_dict().items())
    assert not torch.equal(exported.encoder.state_dict()["layer.2.mlp.fc1.weight"], init["layer.2.mlp.fc1.weight"])
    assert torch.equal(exported.encoder.state_dict()["layer.3.mlp.fc1.weight"], init["layer.3.mlp.fc1.weight"])


def test_a_late_unfrozen_block_starts_with_fresh_adam_state(tmp_path, world):
    tcfg, masking = surgery_train_config(_train_cfg(lpft=False, mgmae=False), MASKING)  # layout 0-1, agent 2-3, ...
    tcfg = tcfg.model_copy(update={"checkpoint_every": 1, "keep_last": 10})
    _surgery(tmp_path, world, tcfg, masking)

    def adam_steps(step):
        state = ckpt.load_checkpoint(tmp_path / "checkpoints" / f"step-{step:08d}.pt")["optimizer"]
        names = [n for g in state["param_groups"] for n in g["names"]]
        ids = [i for g in state["param_groups"] for i in g["params"]]
        return {n: int(state["state"][i]["step"]) if i in state["state"] else None for n, i in zip(names, ids)}

    b0, b1 = "model.encoder.layer.0.mlp.fc1.weight", "model.encoder.layer.1.mlp.fc1.weight"
    assert adam_steps(2)[b0] == 2 and adam_steps(2)[b1] is None  # frozen so far: no state at all
    assert adam_steps(3)[b0] == 3 and adam_steps(3)[b1] == 1  # unfrozen at step 2: its own first step
    assert adam_steps(3)["model.encoder.layer.2.mlp.fc1.weight"] is None


def test_lpft_stage_moves_predictor_and_head_only(tmp_path, world):
    train = _train_cfg()
    tcfg, masking = surgery_train_config(train.model_copy(update={"surgery": train.surgery.model_copy(
        update={"stages": train.surgery.stages[:1], "lpft_steps": 2})}), MASKING)
    assert [s.name for s in tcfg.stages] == ["lpft", "layout"]
    tcfg = tcfg.model_copy(update={"checkpoint_every": 2})
    _surgery(tmp_path, world, tcfg, masking)
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-00000002.pt")["student"]
    init = {f"model.{k}": v for k, v in _model().state_dict().items()}
    enc = [k for k in init if k.startswith("model.encoder.")]
    assert all(torch.equal(state[k], init[k]) for k in enc)  # the encoder did not move in LP-FT
    assert not torch.equal(state["model.predictor.proj.weight"], init["model.predictor.proj.weight"])


def test_resume_across_a_stage_boundary_is_bit_exact(tmp_path, world, monkeypatch):
    """6 steps: lpft 0, layout 1-2, agent 3-4, interaction 5; killed after the step-3 checkpoint (mid 'agent'),
    resumed: the rest crosses into 'interaction'. Same weights, same metrics as 6 steps straight."""
    train = _train_cfg()
    train = train.model_copy(update={"surgery": train.surgery.model_copy(update={"stages": [
        Stage(name="layout", steps=2, unfreeze_fraction=0.25, mixture={"layout": 1.0}),
        Stage(name="agent", steps=2, unfreeze_fraction=0.5, mixture={"agent": 0.75, "raw": 0.25}),
        Stage(name="interaction", steps=1, unfreeze_fraction=0.75, mixture={"interaction": 0.75, "raw": 0.25})]})})
    tcfg, masking = surgery_train_config(train, MASKING)  # SALT, SPD, CLEAR, MGMAE on
    tcfg = tcfg.model_copy(update={"eval_every": 3})
    straight, m1, h1 = _surgery(tmp_path / "a", world, tcfg, masking)

    real_save = ckpt.save_checkpoint

    def killed_at_6(folder, step, payload, keep_last=2):
        if step == 6:
            raise KeyboardInterrupt("killed")
        return real_save(folder, step, payload, keep_last)

    monkeypatch.setattr(ckpt, "save_checkpoint", killed_at_6)
    with pytest.raises(KeyboardInterrupt):
        _surgery(tmp_path / "b", world, tcfg, masking)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert ckpt.load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["step"] == 3
    resumed, m2, h2 = _surgery(tmp_path / "b", world, tcfg, masking, seed_model=9)  # init overwritten by resume
    for a, b in ((m1.state_dict(), m2.state_dict()), (h1.state_dict(), h2.state_dict())):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    timing = ("data_wait_s", "compute_s")
    clean = [{k: v for k, v in r.items() if k not in timing} for r in resumed.history]
    assert clean == [{k: v for k, v in r.items() if k not in timing} for r in straight.history]
    assert [r["stage"] for r in clean] == ["lpft", "layout", "layout", "agent", "agent", "interaction"]


def test_a_stream_with_a_share_but_no_clips_fails_before_training(tmp_path, world):
    raw, aux, streams = world
    tcfg, masking = surgery_train_config(_train_cfg(), MASKING)
    with pytest.raises(loop.UserError, match="interaction"):
        loop.train(tcfg=tcfg, data=DATA, masking=masking, model=_model(), head=MotionAuxHead(32, 2, reg_dims=13),
                   train_clips=raw[:6], val_clips=raw[6:], aux=aux, out_dir=tmp_path,
                   streams={k: v for k, v in streams.items() if k != "interaction"})


# ------------------------------------------------------------------------------------ 2 gloo ranks


def _dist_worker(rank: int, world_size: int, port: int, folder: str, parallel: str = "ddp") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from vjepa_adapt import dist

    dist.init("cpu")
    raw = [Clip(f"c{i}", os.path.join(folder, f"c{i}.mp4"), f"v{i}") for i in range(8)]
    streams = {kind: Stream([Clip(f"{kind}{i}", os.path.join(folder, f"{kind}{i}.mp4"), f"v{i}") for i in range(4)])
               for kind in ("layout", "agent")}
    streams = {k: Stream(s.clips, _aux(s.clips, j + 1)) for j, (k, s) in enumerate(streams.items())}
    train = TrainConfig(steps=1, batch_size=2, lr=1e-3, warmup_steps=1, eval_every=4, checkpoint_every=4,
                        parallel=parallel, surgery=SurgeryConfig(lpft=False, stages=[
                            Stage(name="layout", steps=2, unfreeze_fraction=0.25, mixture={"layout": 1.0}),
                            Stage(name="agent", steps=2, unfreeze_fraction=0.75, mixture={"agent": 0.5, "raw": 0.5})]))
    tcfg, masking = surgery_train_config(train, MASKING)
    model = _model()
    head = MotionAuxHead(32, 2, reg_dims=13)
    loop.train(tcfg=tcfg, data=DATA, masking=masking, model=model, head=head, train_clips=raw[:6], val_clips=raw[6:],
               aux=_aux(raw, 0), out_dir=os.path.join(folder, "run"), seed=3, streams=streams)
    state = dist.gather_full({**model.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}})
    torch.save({k: v.detach().clone() for k, v in state.items()}, os.path.join(folder, f"rank{rank}.pt"))
    dist.shutdown()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_stay_equal_across_a_stage_change_with_a_factor_mixture(tmp_path, parallel):
    """Also fully sharded (FSDP2): the stage change flips requires_grad on the shards, no re-wrap."""
    import torch.multiprocessing as mp
    from test_dist import _free_port

    for i in range(8):
        write_video(tmp_path / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i), fps=10)
    for k, kind in enumerate(("layout", "agent")):
        for i in range(4):
            write_video(tmp_path / f"{kind}{i}.mp4", _moving_square(12, 3 if i % 2 else -3, 50 * (k + 1) + i), fps=10)
    mp.spawn(_dist_worker, args=(2, _free_port(), str(tmp_path), parallel), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    init = _model().state_dict()
    w = "encoder.layer.2.mlp.fc1.weight"  # trains only in stage 2 (0.75 of 4 blocks), after the DDP re-wrap
    assert not torch.equal(a[w], init[w]) and torch.equal(a["encoder.layer.3.mlp.fc1.weight"],
                                                           init["encoder.layer.3.mlp.fc1.weight"])


# ------------------------------------------------------------------------------------ arms and graph


def test_surgery_arms_and_ablations_are_arms_of_the_graph():
    from vjepa_adapt.stages.arms import all_arms, is_head_only, surgery_arms
    from vjepa_adapt.stages.graph import build_graph, targets_for

    cfg = load_config("demo", ["arms.surgery_ablations=[salt,mgmae]"])
    assert surgery_arms(cfg) == {"surgery": (), "surgery_no_salt": ("salt",), "surgery_no_mgmae": ("mgmae",)}
    arms = all_arms(cfg)
    assert arms[-4:] == ["surgery", "surgery_no_salt", "surgery_no_mgmae", "surgery_head"]
    assert is_head_only("surgery_head") and not is_head_only("surgery_no_salt")
    graph = build_graph(cfg)
    for arm in arms[-4:]:
        assert {f"embed/{arm}", f"probe/{arm}"} <= set(graph.specs)
    assert "factorize" in graph.specs["surgery"].needs and graph.specs["surgery"].dirname == "surgery/surgery"
    from pathlib import Path

    # segment.in_run=false (demo): `run` selects segment/factorize only as the surgery's inputs
    selected = graph.upstream(targets_for("demo", cfg, graph, Path("/nonexistent")))
    assert "segment" in selected and "factorize" in selected
    assert targets_for("surgery", cfg, graph, Path("/x")) == ["surgery", "surgery_no_salt", "surgery_no_mgmae"]
    assert targets_for("surgery-head", cfg, graph, Path("/x")) == ["surgery_head"]
    off = load_config("demo", ["arms.surgery=false", "arms.surgery_head=false"])
    assert not any(n.startswith(("segment", "factorize", "surgery")) for n in
                   build_graph(off).upstream(targets_for("demo", off, build_graph(off), Path("/x"))))
    # an ablation of a switch the recipe already has off would be the surgery arm again
    with pytest.raises(ConfigError, match="already off"):
        surgery_arms(load_config("demo", ["arms.surgery_ablations=[spd]", "train.surgery.spd=false"]))
    with pytest.raises(ConfigError, match="arms.surgery=true"):
        load_config("demo", ["arms.surgery=false", "arms.surgery_ablations=[salt]"])
    # a changed surgery setting re-runs the surgery arms, not pretrain
    cfg2 = load_config("demo", ["arms.surgery_ablations=[salt,mgmae]", "train.surgery.lpft_steps=5"])
    h1, h2 = build_graph(cfg).hashes(cfg), build_graph(cfg2).hashes(cfg2)
    assert h1["pretrain"] == h2["pretrain"] and h1["pretrain_head"] == h2["pretrain_head"]
    assert h1["surgery"] != h2["surgery"] and h1["surgery_head"] != h2["surgery_head"]
    cfg3 = load_config("demo", ["arms.surgery_ablations=[salt,mgmae]", "train.steps=300"])  # the pretrain length
    h3 = build_graph(cfg3).hashes(cfg3)
    assert h3["pretrain"] != h1["pretrain"] and h3["surgery"] == h1["surgery"]


def test_segment_processes_only_the_train_split_when_it_runs_as_the_surgerys_input():
    from vjepa_adapt.stages.segment import processed_splits

    assert processed_splits(load_config("demo")) == {"train"}  # demo: segment.in_run=false
    assert processed_splits(load_config(None)) is None  # in_run: every clip
    assert processed_splits(load_config("demo", ["factors.splits=[train,val]"])) == {"train", "val"}


def test_streams_are_the_trainers_data_names():
    from vjepa_adapt.factors import KINDS

    assert STREAMS == ("raw", *KINDS)


# ------------------------------------------------------------------------------------ streamed factors, workers


def test_streamed_factor_clips_are_rebuilt_in_the_loader(tmp_path):
    """factors.materialise=false: the loader rebuilds a factor clip from its source clip and masks
    (FactorFrames, picklable for decode workers); a clip whose masks are gone is a skip, not a crash."""
    from test_factors import clip_with_agents

    from vjepa_adapt.data.video import sample_frame_indices
    from vjepa_adapt.factors import (
        FactorParams,
        build_factor_clip,
        plan_factors,
        spec_to_row,
    )
    from vjepa_adapt.segmentation.masks import save_clip_masks
    from vjepa_adapt.segmentation.stage import masks_path
    from vjepa_adapt.stages.surgery import FactorFrames

    frames, masks = clip_with_agents(n=12)
    masks.info = {"num_frames": 12, "short_side": None}
    source = Clip("c", str(write_video(tmp_path / "c.mp4", frames)), "v")
    save_clip_masks(masks_path(tmp_path / "segment", "c"), masks)
    params = FactorParams(num_frames=10, min_agent_coverage_agent=0.02)
    spec = next(s for s in plan_factors(masks, params)[0] if s.kind == "agent")
    reader = FactorFrames(str(tmp_path / "segment"), params, {"c": source}, {spec.clip_id: spec_to_row(spec)})
    clip = Clip(spec.clip_id, source.path, "v")
    import pickle

    out = pickle.loads(pickle.dumps(reader))(clip, 8)
    assert np.array_equal(out, build_factor_clip(source, masks, spec, params)[sample_frame_indices(10, 8)])
    ds = ClipDataset([clip], num_frames=8, size=32, seed=0, train=True, read=reader)
    assert ds[(0, 0)]["video"].shape == (8, 3, 32, 32)
    (tmp_path / "segment" / "masks" / "c.npz").unlink()
    assert ds[(0, 0)]["skip_reason"] == "unreadable"


def test_a_decode_worker_gives_the_same_mixture_batches_and_flows(tmp_path, world):
    tcfg, masking = surgery_train_config(_train_cfg(lpft=False), MASKING)
    tcfg = tcfg.model_copy(update={"steps": 3, "stages": [tcfg.stages[0].model_copy(update={"steps": 1}),
                                                          tcfg.stages[1].model_copy(update={"steps": 2})]})
    runs = [_surgery(tmp_path / f"w{w}", world, tcfg, masking, num_workers=w)[0] for w in (0, 1)]
    assert [r["jepa"] for r in runs[0].history] == [r["jepa"] for r in runs[1].history]


def test_factor_targets_are_z_scored_per_stream_and_mirrored(tmp_path):
    """Each factor clip's own motion target, z-scored with its stream's train statistics (a D_I tube's
    magnified flow must not dwarf the rest), its class under the motion stage's cuts; val rows are left out."""
    from types import SimpleNamespace

    from vjepa_adapt import storage
    from vjepa_adapt.motion.classes import (
        classify_features,
        mirror_class,
        mirror_motion_aux_targets,
    )
    from vjepa_adapt.stages.surgery import factor_streams

    rng = np.random.default_rng(0)
    rows, feats = [], []
    for kind, n, scale in (("layout", 5, 1.0), ("agent", 4, 1.0), ("interaction", 4, 50.0)):
        for i in range(n):
            rows.append({"clip_id": f"s{i}__{kind}", "kind": kind, "path": f"{kind}/{i}.mp4", "video_id": f"v{i}",
                         "split": "train", "source_clip": f"s{i}", "materialised": True})
            feats.append(np.abs(rng.normal(size=23)) * scale)
    rows.append({**rows[0], "clip_id": "val__layout", "split": "val"})
    feats.append(np.ones(23))
    storage.write_jsonl(tmp_path / "manifest.jsonl", rows)
    np.savez(tmp_path / "motion.npz", clip_ids=np.array([r["clip_id"] for r in rows]), features=np.stack(feats))
    classes = ["slow_right", "fast_right", "fast_left", "slow_left"]
    mo = SimpleNamespace(label_set=SimpleNamespace(classes=classes, cuts=(0.5, 1.0, 2.0), magnitude="foreground",
                                                   direction="foreground"))
    cfg = load_config(None)
    streams = factor_streams(cfg, tmp_path, tmp_path / "segment", mo, [])
    assert {k: len(s.clips) for k, s in streams.items()} == {"layout": 5, "agent": 4, "interaction": 4}
    assert "val__layout" not in streams["layout"].aux.reg
    for kind, s in streams.items():
        z = np.stack([s.aux.reg[c.clip_id] for c in s.clips])  # (n, 13)
        assert z.shape[1] == 13 and np.abs(z.mean(0)).max() < 1e-5 and np.abs(z).max() < 3, kind
        assert np.allclose(z.std(0)[z.std(0) > 0], 1.0, atol=1e-5)
        assert s.clips[0].path == str(tmp_path / f"{kind}/0.mp4")
    c = streams["interaction"].clips[0].clip_id
    f = feats[[r["clip_id"] for r in rows].index(c)]
    name = classify_features(f, (0.5, 1.0, 2.0))
    aux = streams["interaction"].aux
    assert aux.labels[c] == (classes.index(name) if name in classes else -1)
    assert aux.label_flipped[c] == (classes.index(mirror_class(name)) if mirror_class(name) in classes else -1)
    all_z = np.stack([aux.reg[x.clip_id] for x in streams["interaction"].clips])
    zf = np.stack([aux.reg_flipped[x.clip_id] for x in streams["interaction"].clips])
    ids = [x.clip_id for x in streams["interaction"].clips]
    raw = np.stack([feats[[r["clip_id"] for r in rows].index(i)][:13] for i in ids])
    assert np.allclose(zf, mirror_motion_aux_targets(all_z, raw.mean(0), np.maximum(raw.std(0), 1e-6)), atol=1e-5)
