"""The one trainer on a tiny model: it learns, resume is exact (also after a torn checkpoint write),
stages change what trains, head-only moves only the head, and a NaN stops the run cleanly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import write_video

from vjepa_adapt import storage
from vjepa_adapt.config import (
    DataConfig,
    MaskGenerator,
    MaskingConfig,
    Stage,
    TrainConfig,
)
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import AuxTargets
from vjepa_adapt.models.heads import MotionAuxHead
from vjepa_adapt.models.vjepa import build_model
from vjepa_adapt.train import checkpoint as ckpt
from vjepa_adapt.train import loop

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, pred_hidden_size=32,
            pred_num_hidden_layers=1, pred_num_attention_heads=2)
DATA = DataConfig(num_frames=8, size=32)
MASKING = MaskingConfig(generators=[MaskGenerator(num_blocks=2, spatial_scale=0.25),
                                    MaskGenerator(num_blocks=1, spatial_scale=0.5)])


def _moving_square(n_frames: int, dx: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    sq = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
    frames = []
    for t in range(n_frames):
        f = bg.copy()
        x = (8 + dx * t) % 36
        f[18:30, x:x + 12] = sq
        frames.append(f)
    return np.stack(frames)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    out = []
    for i in range(8):
        p = write_video(folder / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i), fps=10)
        out.append(Clip(f"c{i}", str(p), f"v{i}"))
    return out


def _aux(clips):
    labels = {c.clip_id: i % 2 for i, c in enumerate(clips)}
    reg = {c.clip_id: np.full(13, 1.0 if i % 2 else -1.0, np.float32) for i, c in enumerate(clips)}
    return AuxTargets(labels=labels, reg=reg, reg_flipped={k: -v for k, v in reg.items()},
                      label_flipped={k: 1 - v for k, v in labels.items()})


def _run(tmp, clips, tcfg, l2=0.0, mode_head=True, seed_model=0):
    torch.manual_seed(seed_model)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    head = MotionAuxHead(32, 2, reg_dims=13) if mode_head else None
    res = loop.train(tcfg=tcfg.for_arm(l2), data=DATA, masking=MASKING, model=model, head=head, train_clips=clips[:6],
                     val_clips=clips[6:], aux=_aux(clips) if mode_head else None, out_dir=tmp, seed=1)
    return res, model, head


def _tcfg(**kw):
    base = dict(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, eval_every=2, checkpoint_every=2, keep_last=2,
                ema_momentum=(0.9, 0.9))
    base.update(kw)
    return TrainConfig(**base)


def _state(model, head):
    sd = {f"m.{k}": v.clone() for k, v in model.state_dict().items()}
    sd.update({f"h.{k}": v.clone() for k, v in head.state_dict().items()})
    return sd


def test_loss_falls_and_outputs_are_written(tmp_path, clips):
    res, model, head = _run(tmp_path, clips, _tcfg(steps=12, eval_every=6, checkpoint_every=6, lr=3e-3))
    jepa = [r["jepa"] for r in res.history]
    assert np.mean(jepa[-3:]) < np.mean(jepa[:3])
    last = res.history[-1]
    assert last["val_target_std"] > 0.1  # teacher targets did not collapse to a constant
    assert res.history[-1]["pred_std"] > res.history[0]["pred_std"]  # predictions spread out as it learns
    assert last["drift_mean"] > 0 and len(last["drift_blocks"]) == 2
    for f in ("final/encoder/config.json", "best/encoder/model.safetensors", "best/head.safetensors",
              "checkpoints/latest.pt", "metrics.jsonl", "anchor.pt"):
        assert (tmp_path / f).exists(), f
    assert len(storage.read_jsonl(tmp_path / "metrics.jsonl")) == 12


def test_resume_is_exact_after_crash_and_torn_checkpoint(tmp_path, clips, monkeypatch):
    straight, m1, h1 = _run(tmp_path / "a", clips, _tcfg())

    # run b: crash while writing the step-4 checkpoint (a torn write), after step 2's was saved
    real_save = ckpt.save_checkpoint

    def flaky(folder, step, payload, keep_last=2):
        if step == 4:
            raise KeyboardInterrupt("killed while writing")
        return real_save(folder, step, payload, keep_last)

    monkeypatch.setattr(ckpt, "save_checkpoint", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", clips, _tcfg())
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert ckpt.load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["step"] == 2
    resumed, m2, h2 = _run(tmp_path / "b", clips, _tcfg(), seed_model=123)  # init is overwritten by resume
    a, b = _state(m1, h1), _state(m2, h2)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["jepa"] == straight.history[-1]["jepa"]


def test_l2_anchor_reduces_drift(tmp_path, clips):
    free, _, _ = _run(tmp_path / "free", clips, _tcfg(steps=6, eval_every=6, lr=3e-3))
    tied, _, _ = _run(tmp_path / "tied", clips, _tcfg(steps=6, eval_every=6, lr=3e-3), l2=50.0)
    assert tied.history[-1]["drift_mean"] < free.history[-1]["drift_mean"]
    assert tied.history[-1]["l2"] > 0


def test_head_only_moves_only_the_head(tmp_path, clips):
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = MotionAuxHead(32, 2, reg_dims=13)
    h0 = {k: v.clone() for k, v in head.state_dict().items()}
    res = loop.train(tcfg=_tcfg(mode="head_only", motion_aux_weight=1.0), data=DATA, masking=MASKING, model=model,
                     head=head, train_clips=clips[:6], val_clips=clips[6:], aux=_aux(clips), out_dir=tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, h0[k]) for k, v in head.state_dict().items())
    assert "jepa" not in res.history[-1] and res.history[-1]["aux"] > 0
    assert not (tmp_path / "anchor.pt").exists()  # nothing to anchor: the encoder never moves


def test_stages_unfreeze_a_prefix(tmp_path, clips, monkeypatch):
    stages = [Stage(name="s1", steps=2, unfreeze_fraction=0.5), Stage(name="s2", steps=2, unfreeze_fraction=1.0)]
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    snap = {}
    real = loop.stage_at

    def spy(step, tcfg):  # the encoder as it stands when step 2 (stage s2) begins
        if step == 2 and 2 not in snap:
            snap[2] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        return real(step, tcfg)

    monkeypatch.setattr(loop, "stage_at", spy)
    loop.train(tcfg=_tcfg(stages=stages, lr=3e-3), data=DATA, masking=MASKING, model=model, head=None,
               train_clips=clips[:6], val_clips=clips[6:], aux=None, out_dir=tmp_path)
    torch.manual_seed(0)
    init = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY).encoder.state_dict()
    after_s1 = snap[2]
    assert not torch.equal(after_s1["layer.0.mlp.fc1.weight"], init["layer.0.mlp.fc1.weight"])  # in the prefix
    assert torch.equal(after_s1["layer.1.mlp.fc1.weight"], init["layer.1.mlp.fc1.weight"])  # frozen in stage 1
    final = model.encoder.state_dict()
    assert not torch.equal(final["layer.1.mlp.fc1.weight"], init["layer.1.mlp.fc1.weight"])  # trains in stage 2


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, clips):
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    with torch.no_grad():
        model.predictor.proj.weight.fill_(math.nan)
    with pytest.raises(loop.TrainingError, match="non-finite loss at step 0"):
        loop.train(tcfg=_tcfg(), data=DATA, masking=MASKING, model=model, head=None, train_clips=clips[:6],
                   val_clips=clips[6:], aux=None, out_dir=tmp_path)
    assert not (tmp_path / "checkpoints" / "latest.pt").exists()


def test_salt_frozen_teacher_exports_the_student(tmp_path, clips):
    from vjepa_adapt.models.vjepa import load_model

    res, model, _ = _run(tmp_path, clips, _tcfg(teacher="frozen"))
    exported, _ = load_model(str(tmp_path / "final" / "encoder"))
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(exported.encoder.state_dict()[k], v), k  # SALT: the student is the result
    torch.manual_seed(0)
    init = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY).encoder.state_dict()
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    for k, v in state["teacher"].items():
        assert torch.equal(v, init[k]), k  # the teacher never moved


def test_spd_pulls_weights_back(tmp_path, clips):
    free, _, _ = _run(tmp_path / "free", clips, _tcfg(steps=6, eval_every=6, lr=3e-3))
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    spd = loop.train(tcfg=_tcfg(steps=6, eval_every=6, lr=3e-3, spd=0.9), data=DATA, masking=MASKING, model=model,
                     head=MotionAuxHead(32, 2, reg_dims=13), train_clips=clips[:6], val_clips=clips[6:],
                     aux=_aux(clips), out_dir=tmp_path / "spd", seed=1)
    assert spd.history[-1]["drift_mean"] < 0.8 * free.history[-1]["drift_mean"]


_KILL_SCRIPT = r'''
import contextlib, os, signal, sys
sys.path.insert(0, {tests!r})
import test_train as T
from conftest import write_video
from vjepa_adapt import storage
from vjepa_adapt.data.clips import Clip

clips = [Clip(f"c{{i}}", os.path.join({folder!r}, f"c{{i}}.mp4"), f"v{{i}}") for i in range(8)]
real = storage.atomic_open


class DieMidway:
    """The stream torch.save writes the step-4 checkpoint into: SIGKILL once part of it is on disk."""

    def __init__(self, fh):
        self.fh, self.n = fh, 0

    def write(self, data):
        self.fh.write(data)
        self.n += len(data)
        if self.n > 16384:
            self.fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return len(data)

    def flush(self):
        self.fh.flush()


@contextlib.contextmanager
def torn(path, mode="wb"):
    with real(path, mode) as fh:
        yield DieMidway(fh) if "step-00000004" in str(path) else fh


storage.atomic_open = torn
T._run({run!r}, clips, T._tcfg())
'''


@pytest.mark.slow
def test_kill_9_while_writing_a_checkpoint_then_resume(tmp_path, clips):
    import os
    import subprocess
    import sys

    folder = os.path.dirname(clips[0].path)
    _, m1, h1 = _run(tmp_path / "straight", clips, _tcfg())
    script = _KILL_SCRIPT.format(tests=os.path.dirname(__file__), folder=folder, run=str(tmp_path / "killed"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ck = tmp_path / "killed" / "checkpoints"
    assert any(p.name.startswith(storage.TMP_PREFIX) for p in ck.iterdir())  # the torn temp file is there
    assert ckpt.load_checkpoint(ck / "latest.pt")["step"] == 2  # latest still points at a complete step
    _, m2, h2 = _run(tmp_path / "killed", clips, _tcfg(), seed_model=7)
    assert not any(p.name.startswith(storage.TMP_PREFIX) for p in ck.iterdir())  # cleaned on resume
    a, b = _state(m1, h1), _state(m2, h2)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, clips):
    _run(tmp_path, clips, _tcfg(steps=2, eval_every=2, checkpoint_every=2, warmup_steps=0))
    with pytest.raises(loop.TrainingError, match="different settings \\(lr\\)"):
        _run(tmp_path, clips, _tcfg(steps=2, eval_every=2, checkpoint_every=2, warmup_steps=0, lr=0.5))


def test_a_decode_worker_gives_the_same_batches(tmp_path, clips):
    cfg = _tcfg(steps=2, eval_every=2, checkpoint_every=2, warmup_steps=0)
    runs = []
    for w in (0, 1):
        torch.manual_seed(0)
        model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
        runs.append(loop.train(tcfg=cfg, data=DATA, masking=MASKING, model=model, head=None, train_clips=clips[:6],
                               val_clips=clips[6:], aux=None, out_dir=tmp_path / f"w{w}", seed=1, num_workers=w))
    assert [r["jepa"] for r in runs[0].history] == [r["jepa"] for r in runs[1].history]


# ------------------------------------------------------------------- devices, data gaps, resume (#9)


def test_every_tensor_handed_to_the_model_went_through_the_device_move(tmp_path, clips, monkeypatch):
    """Issue #9: the masks stayed on the host (a CUDA gather with a CPU index). On CPU a real move is
    a no-op, so a fake one returns copies: any tensor the model gets that is not a copy was left behind."""
    moved: list[torch.Tensor] = []
    real_move = loop.batch_to_device

    def fake_move(batch, dev):
        out = real_move(batch, dev)
        for k in ("video", "label", "reg"):
            if k in out:
                out[k] = out[k].clone()
                moved.append(out[k])
        if "masks" in out:
            out["masks"] = [type(m)(m.context_ids.clone(), m.target_ids.clone(), m.stats) for m in out["masks"]]
            moved.extend(t for m in out["masks"] for t in (m.context_ids, m.target_ids))
        return out

    handed: list[torch.Tensor] = []
    real_forward, real_encode = loop.Student.forward, loop.encode_full

    def forward(self, video, masks, targets, label, reg, aux_weight):
        handed.extend(t for t in (video, label, reg) if t is not None)
        handed.extend(t for m in masks or [] for t in (m.context_ids, m.target_ids))
        return real_forward(self, video, masks, targets, label, reg, aux_weight)

    def encode(encoder, video):
        handed.append(video)
        return real_encode(encoder, video)

    monkeypatch.setattr(loop, "batch_to_device", fake_move)
    monkeypatch.setattr(loop.Student, "forward", forward)
    monkeypatch.setattr(loop, "encode_full", encode)
    _run(tmp_path, clips, _tcfg(steps=2, eval_every=2, checkpoint_every=2))  # train steps, eval, centroid probe
    assert len(handed) > 10
    left_behind = [tuple(t.shape) for t in handed if not any(t is m for m in moved)]
    assert not left_behind, f"tensors handed to the model without the device move: {left_behind}"


def _with_bad_clips(clips, tmp_path, positions, seed=1):
    """The 6 train clips with the ones at these positions of epoch 0's permutation made unreadable."""
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = list(clips[:6])
    for pos in positions:
        i = int(np.random.default_rng([seed, 0]).permutation(6)[pos])
        out[i] = Clip(f"bad{pos}", str(bad), f"vb{pos}")
    return out


def test_a_step_with_no_readable_clip_steps_neither_optimizer_nor_teacher(tmp_path, clips):
    """Issue #9: with every micro-batch of a step skipped the heartbeat raised KeyError 'loss' and the
    optimizer and EMA teacher still stepped."""
    train_clips = _with_bad_clips(clips, tmp_path, positions=(2, 3))  # batch 2: step 1 is both of them
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    res = loop.train(tcfg=_tcfg(steps=3, eval_every=3, checkpoint_every=1, keep_last=3), data=DATA, masking=MASKING,
                     model=model, head=MotionAuxHead(32, 2, reg_dims=13), train_clips=train_clips,
                     val_clips=clips[6:], aux=_aux(clips), out_dir=tmp_path / "run", seed=1)
    rows = res.history
    assert rows[1]["no_data"] is True and "loss" not in rows[1] and "loss" in rows[0] and "loss" in rows[2]
    assert sorted({c for c, _ in res.skipped}) == ["bad2", "bad3"]
    ck = tmp_path / "run" / "checkpoints"
    before, after = (ckpt.load_checkpoint(ck / f"step-{s:08d}.pt") for s in (1, 2))
    for part in ("student", "teacher"):
        for k, v in before[part].items():
            assert torch.equal(v, after[part][k]), (part, k)
    assert before["optimizer"]["state"][0]["step"] == after["optimizer"]["state"][0]["step"]
    w = "model.encoder.layer.0.mlp.fc1.weight"  # ... and the next step with data trains again
    assert not torch.equal(before["student"][w], ckpt.load_checkpoint(ck / "step-00000003.pt")["student"][w])


def test_micro_batch_weights():
    # every rank has data: weight 1 (exactly), in one process too
    assert loop.micro_batch_weights([True, True], [4, 4], 4) == [1.0, 1.0]
    assert loop.micro_batch_weights([True], [1], 1) == [1.0]
    # micro-batch 0: 3 of 4 ranks have data -> 4/3 for them, 0 (a stand-in) for this one; 1: nobody -> skipped
    assert loop.micro_batch_weights([True, False], [3, 0], 4) == [4 / 3, None]
    assert loop.micro_batch_weights([False, True], [3, 4], 4) == [0.0, 1.0]


def test_metrics_after_a_crash_and_resume_hold_each_step_once(tmp_path, clips, monkeypatch):
    """Issue #9: metrics.jsonl repeated the steps between the last checkpoint and the crash."""
    real_write = loop.MetricsLog.write

    def crash_after_step_3(self, row):
        real_write(self, row)
        if row["step"] == 3:
            raise KeyboardInterrupt("killed after step 3 (its row written, the step-4 checkpoint not)")

    monkeypatch.setattr(loop.MetricsLog, "write", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, clips, _tcfg())
    assert [r["step"] for r in storage.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "lo')  # and a line torn by the kill
    monkeypatch.setattr(loop.MetricsLog, "write", real_write)
    _run(tmp_path, clips, _tcfg())  # resumes at step 2 (the last checkpoint)
    assert [r["step"] for r in storage.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resume_with_another_number_of_ranks_is_refused(tmp_path, clips):
    _run(tmp_path, clips, _tcfg(steps=2, eval_every=2, checkpoint_every=2, warmup_steps=0))
    path = tmp_path / "checkpoints" / "step-00000002.pt"
    state = ckpt.load_checkpoint(path)
    # step × global batch (batch × accumulation × ranks)
    assert state["data"] == {"sampler_position": 2 * 2 * 1, "world_size": 1, "global_batch": 2}
    state["data"] = {"sampler_position": 2 * 2 * 4, "world_size": 4, "global_batch": 8}
    storage.save_torch(path, state)
    with pytest.raises(loop.TrainingError, match="written with 4 ranks.*same number of ranks.*global_batch_size"):
        _run(tmp_path, clips, _tcfg(steps=2, eval_every=2, checkpoint_every=2, warmup_steps=0))


def test_latest_is_a_link_to_the_newest_step_file(tmp_path, clips):
    """Issue #9: 'latest' was a second full copy of every checkpoint."""
    _run(tmp_path, clips, _tcfg())
    ck = tmp_path / "checkpoints"
    latest = ck / "latest.pt"
    assert latest.is_symlink() and latest.resolve() == (ck / "step-00000004.pt").resolve()
    assert sorted(p.name for p in ck.iterdir()) == ["latest.pt", "step-00000002.pt", "step-00000004.pt"]
    assert ckpt.find_resume(ck, "auto") == ck / "step-00000004.pt"
    assert "anchor" not in ckpt.load_checkpoint(latest)  # θ₀ once, in anchor.pt
    assert (tmp_path / "anchor.pt").exists()


def test_the_predictor_uses_the_mask_token_the_weights_record(tmp_path, clips, monkeypatch):
    """model.predictor_mask_index is true: our exports record the token, loading reports it, training uses it."""
    from vjepa_adapt.config import load_config
    from vjepa_adapt.models.vjepa import export_encoder, load_model
    from vjepa_adapt.stages.encoders import load_frozen

    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    assert model.config.predictor_mask_index == 0  # what the official trainer used; ours too by default
    model.config.predictor_mask_index = 3
    export_encoder(model, tmp_path / "enc")
    loaded, report = load_model(str(tmp_path / "enc"))
    assert report.predictor_mask_index == 3 and loaded.config.predictor_mask_index == 3
    used = []
    real_predict = loop.predict
    monkeypatch.setattr(loop, "predict", lambda *a, mask_index, **k: used.append(mask_index) or real_predict(
        *a, mask_index=mask_index, **k))
    loop.train(tcfg=_tcfg(steps=1, eval_every=1, checkpoint_every=1, warmup_steps=0), data=DATA, masking=MASKING,
               model=loaded, head=None, train_clips=clips[:6], val_clips=clips[6:], aux=None, out_dir=tmp_path / "run")
    assert used and set(used) == {3}
    assert load_model(str(tmp_path / "run" / "final" / "encoder"))[1].predictor_mask_index == 3  # recorded again
    # the config's override wins over the record, and is what the model then carries
    cfg = load_config(None, [f"model.weights={tmp_path / 'enc'}", "model.predictor_mask_index=5", "data.size=32",
                             "data.num_frames=8", "model.patch_size=8"])
    assert load_frozen(cfg, tmp_path).config.predictor_mask_index == 5
    cfg = load_config(None, [f"model.weights={tmp_path / 'enc'}", "data.size=32", "data.num_frames=8",
                             "model.patch_size=8"])
    assert load_frozen(cfg, tmp_path).config.predictor_mask_index == 3


def test_a_sweep_is_not_one_arm():
    with pytest.raises(ValueError, match="sweep of 2 arms"):
        _ = _tcfg(l2_anchor=[0.0, 0.1]).l2_lambda
    assert _tcfg(l2_anchor=[0.0, 0.1]).for_arm(0.1).l2_lambda == 0.1


def test_checkpoints_stream_to_disk_without_a_copy_in_memory(tmp_path):
    """Issue #9: every checkpoint was serialised whole in memory first (~16 GB of host RAM for ViT-g)."""
    import tracemalloc

    state = {"w": torch.ones(8 * 2**20), "v": torch.arange(2**20, dtype=torch.float32)}  # 36 MiB
    tracemalloc.start()
    try:
        ckpt.save_checkpoint(tmp_path, 1, state, keep_last=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB of Python memory for a 36 MiB checkpoint"
    back = ckpt.load_checkpoint(tmp_path / "latest.pt")
    assert back["step"] == 1 and torch.equal(back["w"], state["w"]) and torch.equal(back["v"], state["v"])


@pytest.mark.parametrize("aux_input", ["context", "clip"])
def test_the_motion_aux_head_reads_what_aux_input_says(aux_input):
    """'context': the mean of the student's context tokens over the mask generators; 'clip': the
    student's tokens of the whole clip (the frozen-feature view the probe sees)."""
    from vjepa_adapt.masking import MaskSpec, MultiblockMasker
    from vjepa_adapt.models.vjepa import encode_context, encode_full, token_grid

    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY).eval()
    head = MotionAuxHead(32, 2, reg_dims=13).eval()
    seen = []
    head.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    student = loop.Student(model, head, "jepa", aux_input)
    video = torch.randn(2, 8, 3, 32, 32)
    masks = MultiblockMasker(token_grid(model.config, 8), (MaskSpec(2, 0.25), MaskSpec(1, 0.5)), seed=0)(2, 0)
    with torch.no_grad():
        targets = encode_full(model.encoder, video)
        student(video, masks, targets, torch.tensor([0, 1]), torch.zeros(2, 13), 1.0)
        if aux_input == "clip":
            want = encode_full(model.encoder, video).mean(1)
        else:
            want = torch.stack([encode_context(model.encoder, video, m.context_ids).mean(1) for m in masks]).mean(0)
    torch.testing.assert_close(seen[0], want)


def test_a_non_finite_loss_between_settles_never_reaches_a_checkpoint(tmp_path, clips, monkeypatch):
    """Issue 14: the step no longer reads its loss back, so a NaN at step 4 (0-based) is found at the next
    settle (the heartbeat after step 6, heartbeats every 3 of 30 steps) — which raises, names step 4, and
    leaves the step-4 checkpoint (written before the NaN) the newest."""
    calls = []
    real = loop.jepa_loss

    def nan_at_step_4(preds, tgts):
        calls.append(1)
        out = real(preds, tgts)
        return out * math.nan if len(calls) == 5 else out

    monkeypatch.setattr(loop, "jepa_loss", nan_at_step_4)
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    tcfg = _tcfg(steps=30, eval_every=30, checkpoint_every=4, log_every=10, warmup_steps=1)
    with pytest.raises(loop.TrainingError, match="non-finite loss at step 4 .*last good checkpoint"):
        loop.train(tcfg=tcfg, data=DATA, masking=MASKING, model=model, head=None, train_clips=clips[:6],
                   val_clips=clips[6:], aux=None, out_dir=tmp_path)
    assert len(calls) == 6  # step 5 ran too (on NaN weights), then the heartbeat's settle stopped the run
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")) == ["step-00000004.pt"]
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert all(torch.isfinite(v).all() for v in state["student"].values())
    assert [r["step"] for r in storage.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resume_under_other_execution_settings_is_allowed(tmp_path, clips):
    """log_every and parallel say how a run executes, not what it computes: a resume may change them."""
    _run(tmp_path, clips, _tcfg(steps=2, eval_every=2, checkpoint_every=1, warmup_steps=0))
    (tmp_path / "checkpoints" / "step-00000002.pt").unlink()
    res, _, _ = _run(tmp_path, clips, _tcfg(steps=2, eval_every=2, checkpoint_every=1, warmup_steps=0, log_every=1,
                                            parallel="fsdp"))
    assert [r["step"] for r in res.history] == [1, 2]
