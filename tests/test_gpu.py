"""The trainer and embed on a CUDA device: a JEPA step, a stage change, a head-only step, embed.

Marked ``gpu`` (not in the default suite; ``pytest -m gpu`` on a machine with CUDA). On CPU the
device discipline is checked by tests/test_train.py::test_every_tensor_handed_to_the_model_went_through_the_device_move.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import DATA, MASKING, TINY, _aux, clips  # noqa: F401  (clips is a fixture)

from vjepa_adapt.config import Stage, TrainConfig
from vjepa_adapt.models.heads import MotionAuxHead
from vjepa_adapt.models.vjepa import build_model
from vjepa_adapt.train import loop

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _tcfg(**kw):
    base = dict(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, eval_every=4, checkpoint_every=4, keep_last=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_jepa_steps_with_a_stage_change_on_cuda(tmp_path, clips, dtype):  # noqa: F811
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    last = model.encoder.layer[-1].mlp.fc1.weight.detach().clone()
    stages = [Stage(name="prefix", steps=2, unfreeze_fraction=0.5), Stage(name="all", steps=2)]
    res = loop.train(tcfg=_tcfg(stages=stages), data=DATA, masking=MASKING, model=model,
                     head=MotionAuxHead(32, 2, reg_dims=13), train_clips=clips[:6], val_clips=clips[6:],
                     aux=_aux(clips), out_dir=tmp_path, seed=1, device="cuda", dtype=dtype)
    assert next(model.parameters()).is_cuda
    assert all(np.isfinite(r["loss"]) for r in res.history)
    assert not torch.equal(model.encoder.layer[-1].mlp.fc1.weight.detach().cpu(), last.cpu())  # trained in stage 2


def test_head_only_step_on_cuda(tmp_path, clips):  # noqa: F811
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    res = loop.train(tcfg=_tcfg(mode="head_only", motion_aux_weight=1.0), data=DATA, masking=MASKING, model=model,
                     head=MotionAuxHead(32, 2, reg_dims=13), train_clips=clips[:6], val_clips=clips[6:],
                     aux=_aux(clips), out_dir=tmp_path, device="cuda")
    assert all(np.isfinite(r["aux"]) for r in res.history)


def test_embed_on_cuda(tmp_path, clips):  # noqa: F811
    from vjepa_adapt.evaluate.embed import embed_clips, load_features

    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    res = embed_clips(model.encoder, clips, tmp_path, num_frames=8, size=32, batch_size=4, pooled_grid=(1, 2, 2),
                      device="cuda", dtype="bf16")
    feats = load_features(tmp_path)
    assert res.done == len(clips) and feats["tokens"].shape == (len(clips), 4, 32)
    assert np.isfinite(feats["mean"]).all()
