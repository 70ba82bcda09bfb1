"""Model layer on HF VJEPA2Model: presets, masked forward, predictor, loading, export, pooling.

All models here are tiny and random; the 'tiny' preset is shrunk further to 32 px x 4 frames
(2 x 4 x 4 = 32 tokens) through the same crop_size / frames_per_clip arguments users pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import VJEPA2Config, VJEPA2Model

from vjepa_adapt.errors import WeightsError
from vjepa_adapt.models import vjepa
from vjepa_adapt.models.pooling import mean_pool, pool_tokens
from vjepa_adapt.models.vjepa import (
    autocast_context,
    build_config,
    build_model,
    enable_activation_checkpointing,
    encode_context,
    encode_full,
    export_encoder,
    load_model,
    predict,
    teacher_targets,
    token_grid,
)

CROP, FRAMES = 32, 4  # tiny preset at 32 px / 4 frames: grid (2, 4, 4)


def _tiny(seed: int = 0, **overrides) -> VJEPA2Model:
    torch.manual_seed(seed)
    model = build_model("tiny", crop_size=CROP, frames_per_clip=FRAMES, **overrides).eval()
    with torch.no_grad():  # zero-init mask tokens would hide mask-token bugs; make them distinct
        model.predictor.embeddings.mask_tokens.normal_()
    return model


def _video(b: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, FRAMES, 3, CROP, CROP, generator=g)


def _num_tokens(model: VJEPA2Model) -> int:
    t, h, w = token_grid(model.config)
    return t * h * w


def _random_split(b: int, n: int, n_ctx: int, n_tgt: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    return perms[:, :n_ctx], perms[:, n_ctx:n_ctx + n_tgt]


def _gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------- presets


def test_released_presets_match_official_architectures():
    # (hidden, layers, heads, fc1 width, crop) of facebook/vjepa2-{vitl,vith,vitg}-fpc64-{256,384}
    expected = {
        "vitl-256": (1024, 24, 16, 4096, 256),
        "vith-256": (1280, 32, 16, 5120, 256),
        "vitg-256": (1408, 40, 22, 6144, 256),
        "vitg-384": (1408, 40, 22, 6144, 384),
    }
    for preset, (hidden, layers, heads, fc1, crop) in expected.items():
        c = build_config(preset)
        assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.crop_size) == (hidden, layers, heads, crop)
        assert int(c.hidden_size * c.mlp_ratio) == fc1  # HF VJEPA2MLP width rule
        assert (c.patch_size, c.tubelet_size, c.frames_per_clip) == (16, 2, 64)
        assert (c.pred_hidden_size, c.pred_num_hidden_layers, c.pred_num_attention_heads) == (384, 12, 12)
        assert c.pred_num_mask_tokens == 10
        assert vjepa.HUB_IDS[preset].startswith("facebook/vjepa2-")
    with pytest.raises(ValueError, match="unknown model preset"):
        build_config("vit-huge-typo")


def test_tiny_preset_grid_and_crop_override():
    c = build_config("tiny")
    assert token_grid(c) == (8, 8, 8)  # >= 8 x 4 x 4 tokens at 64 px, 16 frames
    assert token_grid(c, num_frames=4) == (2, 8, 8)
    assert build_config("tiny", crop_size=128).crop_size == 128
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_config("tiny", crop_size=60)
    model = build_model("tiny", crop_size=64, frames_per_clip=FRAMES)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="crop_size=32"):  # 32 px video into a 64 px RoPE grid
        encode_full(model.encoder, _video())


# ---------------------------------------------------------------------------------- forward paths


def test_encode_full_matches_hf_forward():
    model, video = _tiny(), _video()
    with torch.no_grad():
        ref = model(video, skip_predictor=True).last_hidden_state
        ours = encode_full(model.encoder, video)
    assert ours.shape == (2, 32, 192)
    torch.testing.assert_close(ours, ref)


def test_masked_context_with_every_token_equals_full_path():
    model, video = _tiny(), _video()
    n = _num_tokens(model)
    with torch.no_grad():
        full = encode_full(model.encoder, video)
        ids = torch.arange(n).repeat(2, 1)
        torch.testing.assert_close(encode_context(model.encoder, video, ids), full, rtol=1e-5, atol=1e-5)
        # Shuffled order: each token still gets its own position, so outputs are the same rows permuted.
        perm = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
        torch.testing.assert_close(encode_context(model.encoder, video, perm), _gather(full, perm), rtol=1e-5, atol=1e-5)


def test_context_output_ignores_masked_out_pixels_and_uses_true_positions():
    model, video = _tiny(), _video(b=1)
    t, h, w = token_grid(model.config)
    patch, tub = model.config.patch_size, model.config.tubelet_size
    masked_token = 5  # t=0, h=1, w=1 -> frames 0..1, rows 8..15, cols 8..15
    ctx = torch.tensor([[i for i in range(t * h * w) if i != masked_token][:20]])
    changed = video.clone()
    changed[:, 0:tub, :, patch:2 * patch, patch:2 * patch] += 3.0
    kept_changed = video.clone()
    kept_changed[:, 0:tub, :, 0:patch, 0:patch] += 3.0  # token 0, which is in the context
    with torch.no_grad():
        base = encode_context(model.encoder, video, ctx)
        torch.testing.assert_close(encode_context(model.encoder, changed, ctx), base)
        assert not torch.allclose(encode_context(model.encoder, kept_changed, ctx), base, atol=1e-4)
        # Positions matter: the same tokens run without position ids (as if they were 0..Nc-1) differ.
        x = _gather(model.encoder.embeddings(video), ctx)
        for layer in model.encoder.layer:
            x = layer(x, None)[0]
        assert not torch.allclose(model.encoder.layernorm(x), base, atol=1e-4)


def test_teacher_targets_are_normalised_without_grad():
    model, video = _tiny(), _video()
    model.train()
    y = teacher_targets(model.encoder, video)
    assert not y.requires_grad
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 32), atol=1e-3, rtol=0)
    with torch.no_grad():
        full = encode_full(model.encoder, video)
    torch.testing.assert_close(y, F.layer_norm(full, (192,)))


def test_predict_matches_hf_predictor_forward():
    model, video = _tiny(), _video()
    n = _num_tokens(model)
    ctx, tgt = _random_split(2, n, n_ctx=12, n_tgt=9)
    with torch.no_grad():
        out = model(video, context_mask=[ctx], target_mask=[tgt])
        states = _gather(out.last_hidden_state, ctx)
        ours = predict(model.predictor, states, ctx, tgt, mask_index=1)  # HF hard-wires mask token 1
        torch.testing.assert_close(ours, out.predictor_output.last_hidden_state)
        # HF's default masks: full context and full target (overlapping positions).
        full = torch.arange(n).repeat(2, 1)
        ref_full = model(video).predictor_output.last_hidden_state
        torch.testing.assert_close(predict(model.predictor, out.last_hidden_state, full, full, mask_index=1), ref_full)


def test_mask_index_picks_that_mask_token():
    model, video = _tiny(), _video()
    n = _num_tokens(model)
    ctx, tgt = _random_split(2, n, n_ctx=12, n_tgt=9)
    tokens = model.predictor.embeddings.mask_tokens
    with torch.no_grad():
        states = encode_context(model.encoder, video, ctx)
        # Not constant vectors: the first LayerNorm maps every constant vector to the same output.
        g = torch.Generator().manual_seed(9)
        tokens[0].copy_(torch.randn(tokens[0].shape, generator=g))
        tokens[1].copy_(torch.randn(tokens[1].shape, generator=g))
        p0 = predict(model.predictor, states, ctx, tgt, mask_index=0)
        p1 = predict(model.predictor, states, ctx, tgt, mask_index=1)
        assert not torch.allclose(p0, p1, atol=1e-4)
        tokens[1].copy_(torch.randn(tokens[1].shape, generator=g))  # token 1 changes: index-0 output must not, index-1 output must
        torch.testing.assert_close(predict(model.predictor, states, ctx, tgt, mask_index=0), p0)
        assert not torch.allclose(predict(model.predictor, states, ctx, tgt, mask_index=1), p1, atol=1e-4)
        assert vjepa.DEFAULT_PREDICTOR_MASK_INDEX == 0
        torch.testing.assert_close(predict(model.predictor, states, ctx, tgt), p0)
        with pytest.raises(ValueError, match="out of range"):
            predict(model.predictor, states, ctx, tgt, mask_index=10)


def _jepa_loss(model: VJEPA2Model, video: torch.Tensor, ctx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    targets = _gather(teacher_targets(model.encoder, video), tgt)
    pred = predict(model.predictor, encode_context(model.encoder, video, ctx), ctx, tgt)
    return (pred - targets).abs().mean()


def test_activation_checkpointing_gives_same_gradients():
    video = _video()
    ctx, tgt = _random_split(2, 32, n_ctx=10, n_tgt=12)
    grads = []
    for checkpointing in (False, True):
        model = _tiny().train()
        if checkpointing:
            enable_activation_checkpointing(model)
            assert model.encoder.layer[0].gradient_checkpointing
        _jepa_loss(model, video, ctx, tgt).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "encoder.layer.0.attention.query.weight" in grads[0]
    assert "predictor.embeddings.mask_tokens" in grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


def test_autocast_context_bf16_and_fp32():
    model, video = _tiny(), _video()
    ctx = torch.arange(10).repeat(2, 1)
    with torch.no_grad():
        with autocast_context("cpu", "bf16"):
            y16 = encode_context(model.encoder, video, ctx)
        with autocast_context("cpu", "fp32"):
            y32 = encode_context(model.encoder, video, ctx)
    assert y32.dtype == torch.float32
    assert y16.dtype in (torch.bfloat16, torch.float32)  # LayerNorm autocasts to fp32 on some builds
    assert (y16.float() - y32).abs().mean() < 0.05
    with pytest.raises(ValueError, match="bf16"):
        autocast_context("cpu", "fp16")


# ------------------------------------------------------------------------------ loading and export


def _outputs(model: VJEPA2Model, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ctx, tgt = _random_split(video.shape[0], _num_tokens(model), n_ctx=12, n_tgt=9)
    with torch.no_grad():
        states = encode_context(model.encoder, video, ctx)
        return states, predict(model.predictor, states, ctx, tgt)


def test_export_then_from_pretrained_and_load_model_give_identical_outputs(tmp_path):
    model, video = _tiny(), _video()
    out_dir = tmp_path / "export" / "encoder_hf"
    assert export_encoder(model, out_dir) == out_dir
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out_dir))
    ref = _outputs(model, video)
    reloaded = VJEPA2Model.from_pretrained(out_dir).eval()
    for a, b in zip(_outputs(reloaded, video), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    loaded, report = load_model(str(out_dir))
    assert report.kind == "hf_folder" and report.fraction == 1.0 and not report.missing
    for a, b in zip(_outputs(loaded.eval(), video), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Re-export over an existing folder replaces it and leaves no temp folders behind.
    export_encoder(_tiny(seed=7), out_dir)
    assert sorted(os.listdir(out_dir.parent)) == ["encoder_hf"]
    assert not torch.allclose(_outputs(VJEPA2Model.from_pretrained(out_dir).eval(), video)[0], ref[0])


def test_export_with_encoder_state_swaps_only_the_encoder(tmp_path):
    model, teacher, video = _tiny(seed=1), _tiny(seed=2), _video()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_encoder(model, tmp_path / "enc", encoder_state=teacher.encoder.state_dict())
    for k, v in model.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    reloaded = VJEPA2Model.from_pretrained(tmp_path / "enc").eval()
    with torch.no_grad():
        torch.testing.assert_close(encode_full(reloaded.encoder, video), encode_full(teacher.encoder, video))
    torch.testing.assert_close(reloaded.predictor.embeddings.mask_tokens, model.predictor.embeddings.mask_tokens)
    with pytest.raises(ValueError, match="does not fit"):
        export_encoder(model, tmp_path / "bad", encoder_state={"layernorm.weight": torch.ones(7)})
    assert not (tmp_path / "bad").exists()


def test_load_model_crop_override_on_hf_folder(tmp_path):
    export_encoder(_tiny(), tmp_path / "m")
    model, _ = load_model(tmp_path / "m", crop_size=64, frames_per_clip=16)
    assert (model.config.crop_size, model.config.frames_per_clip) == (64, 16)
    with pytest.raises(WeightsError, match="does not match preset 'vitl-256'"):
        load_model(tmp_path / "m", preset="vitl-256")


def _to_official(hf_sd: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Inverse of the official->HF mapping, written independently from the module under test."""
    enc, pred = {}, {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf_sd.items():
        if m := re.fullmatch(r"(encoder|predictor)\.layer\.(\d+)\.attention\.(query|key|value)\.(weight|bias)", key):
            part, idx, which, kind = m.groups()
            name = f"{'blocks' if part == 'encoder' else 'predictor_blocks'}.{idx}.attn.qkv.{kind}"
            qkv.setdefault(f"{part}|{name}", {})[which] = value
            continue
        if key == "predictor.embeddings.mask_tokens":
            for i in range(value.shape[0]):
                pred[f"module.backbone.mask_tokens.{i}"] = value[i].clone()
            continue
        name = key
        for old, new in [
            (r"^encoder\.embeddings\.patch_embeddings\.proj\.", "patch_embed.proj."),
            (r"^encoder\.layer\.(\d+)\.attention\.proj\.", r"blocks.\1.attn.proj."),
            (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
            (r"^encoder\.layernorm\.", "norm."),
            (r"^predictor\.embeddings\.predictor_embeddings\.", "predictor_embed."),
            (r"^predictor\.layer\.(\d+)\.attention\.proj\.", r"predictor_blocks.\1.attn.proj."),
            (r"^predictor\.layer\.(\d+)\.", r"predictor_blocks.\1."),
            (r"^predictor\.layernorm\.", "predictor_norm."),
            (r"^predictor\.proj\.", "predictor_proj."),
        ]:
            name, hits = re.subn(old, new, name)
            if hits:
                break
        assert name != key, key
        (enc if key.startswith("encoder.") else pred)["module.backbone." + name] = value.clone()
    for tag, parts in qkv.items():
        part, name = tag.split("|")
        fused = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        (enc if part == "encoder" else pred)["module.backbone." + name] = fused
    return enc, pred


def test_official_pt_with_prefixed_keys_loads_exactly(tmp_path):
    model, video = _tiny(seed=3), _video()
    enc, pred = _to_official(model.state_dict())
    assert "module.backbone.blocks.0.attn.qkv.weight" in enc and "module.backbone.mask_tokens.9" in pred
    enc["module.backbone.pos_embed"] = torch.zeros(1, 32, 192)  # present in official files, unused by RoPE
    decoy, _ = _to_official(_tiny(seed=4).state_dict())  # 'encoder' (student) must lose to 'target_encoder'
    path = tmp_path / "vitl.pt"
    torch.save({"encoder": decoy, "target_encoder": enc, "predictor": pred, "epoch": 3}, path)
    loaded, report = load_model(path, crop_size=CROP, frames_per_clip=FRAMES)  # preset inferred: tiny
    assert report.kind == "official" and report.encoder_key == "target_encoder"
    assert report.fraction == 1.0 and not report.unexpected and report.ignored == ("module.backbone.pos_embed",)
    assert report.predictor_mask_index == 0
    for a, b in zip(_outputs(loaded.eval(), video), _outputs(model, video)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_toolkit_checkpoint_prefers_teacher(tmp_path):
    student, teacher, video = _tiny(seed=5), _tiny(seed=6), _video()
    ckpt = {
        "format_version": 1,
        "student": student.state_dict(),
        "teacher": teacher.encoder.state_dict(),  # bare VJEPA2Encoder keys
        "predictor": student.predictor.state_dict(),  # bare VJEPA2Predictor keys
        "model_config": student.config.to_dict(),
    }
    torch.save(ckpt, tmp_path / "latest.pt")
    loaded, report = load_model(tmp_path / "latest.pt")
    assert report.kind == "toolkit" and report.encoder_key == "teacher" and report.fraction == 1.0
    states, preds = _outputs(loaded.eval(), video)
    torch.testing.assert_close(states, _outputs(teacher, video)[0], rtol=0, atol=0)
    ctx, tgt = _random_split(2, 32, n_ctx=12, n_tgt=9)
    with torch.no_grad():
        torch.testing.assert_close(preds, predict(student.predictor, states, ctx, tgt), rtol=0, atol=0)


def test_flat_safetensors_state_dict_loads(tmp_path):
    from safetensors.torch import save_file

    model, video = _tiny(seed=8), _video()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "weights.safetensors")
    loaded, report = load_model(tmp_path / "weights.safetensors", preset="tiny", crop_size=CROP, frames_per_clip=FRAMES)
    assert report.kind == "state_dict" and report.fraction == 1.0
    torch.testing.assert_close(_outputs(loaded.eval(), video)[1], _outputs(model, video)[1], rtol=0, atol=0)


def test_mismatched_or_partial_checkpoints_fail_clearly(tmp_path):
    wide = build_model("tiny", crop_size=CROP, frames_per_clip=FRAMES, hidden_size=96)
    enc, pred = _to_official(wide.state_dict())
    torch.save({"target_encoder": enc, "predictor": pred}, tmp_path / "wide.pt")
    with pytest.raises(WeightsError, match=r"shape mismatches .*checkpoint \(96") as err:
        load_model(tmp_path / "wide.pt", preset="tiny", crop_size=CROP, frames_per_clip=FRAMES)
    assert "wide.pt" in str(err.value)

    enc, pred = _to_official(_tiny().state_dict())
    half = dict(list(enc.items())[: len(enc) // 2])
    torch.save({"target_encoder": half, "predictor": pred}, tmp_path / "half.pt")
    with pytest.raises(WeightsError, match=r"only \d+ of 171 model tensors \(\d+\.\d%\)") as err:
        load_model(tmp_path / "half.pt", preset="tiny", crop_size=CROP, frames_per_clip=FRAMES)
    assert "missing" in str(err.value) and "encoder.layer" in str(err.value)
    # The same file passes when the caller lowers the bar on purpose.
    _, report = load_model(tmp_path / "half.pt", preset="tiny", crop_size=CROP, frames_per_clip=FRAMES,
                           min_loaded_fraction=0.5)
    assert 0.5 < report.fraction < 0.99 and report.missing


def test_encoder_only_checkpoint_counts_encoder_when_predictor_not_required(tmp_path):
    enc, _ = _to_official(_tiny().state_dict())
    torch.save({"target_encoder": enc}, tmp_path / "enc.pt")
    with pytest.raises(WeightsError, match="predictor"):
        load_model(tmp_path / "enc.pt", preset="tiny", crop_size=CROP, frames_per_clip=FRAMES)
    _, report = load_model(tmp_path / "enc.pt", preset="tiny", crop_size=CROP, frames_per_clip=FRAMES,
                           require_predictor=False)
    assert report.fraction == 1.0 and report.total == 2 + 6 * 16 + 2  # patch embed, 6 blocks, final norm


def test_missing_unreadable_and_offline_sources_raise_weights_error(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match=r"nope\.pt.*does not exist.*official V-JEPA 2"):
        load_model(str(tmp_path / "nope.pt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(WeightsError, match="without config.json"):
        load_model(tmp_path / "empty_dir")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="weights_only"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": Path("x")}, tmp_path / "pickled.pt")  # needs full unpickling: refused
    with pytest.raises(WeightsError, match="weights_only"):
        load_model(tmp_path / "pickled.pt")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(VJEPA2Config, "from_pretrained", offline)
    with pytest.raises(WeightsError, match=r"could not download.*HF_HOME.*local folder"):
        load_model("facebook/vjepa2-vitg-fpc64-384")


# ------------------------------------------------------------------------------------------ pooling


def test_pool_tokens_hand_computed():
    grid = token_grid(build_config("tiny", crop_size=32, frames_per_clip=4, patch_size=8))  # (2, 4, 4)
    assert grid == (2, 4, 4)
    t, h, w = torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(4), indexing="ij")
    value = (100 * t + 10 * h + w).float().reshape(1, -1, 1)  # token order t*16 + h*4 + w
    tokens = torch.cat([value, -value], dim=-1)  # (1, 32, 2)
    pooled = pool_tokens(tokens, grid, out_grid=(1, 2, 2))
    assert pooled.shape == (1, 4, 2)
    # cell (h 0-1, w 0-1): mean t = 0.5, h = 0.5, w = 0.5 -> 50 + 5 + 0.5; cell (h 2-3, w 0-1): 50 + 25 + 0.5
    torch.testing.assert_close(pooled[0, :, 0], torch.tensor([55.5, 57.5, 75.5, 77.5]))
    torch.testing.assert_close(pooled[0, :, 1], -pooled[0, :, 0])
    torch.testing.assert_close(pool_tokens(tokens, grid, out_grid=(2, 1, 1))[0, :, 0], torch.tensor([16.5, 116.5]))
    torch.testing.assert_close(mean_pool(tokens)[0], torch.tensor([66.5, -66.5]))
    assert pool_tokens(tokens.repeat(1, 1, 1), (2, 4, 4)).shape == (1, 16, 2)  # default 1 x 4 x 4
    with pytest.raises(ValueError, match="does not match grid"):
        pool_tokens(tokens, (2, 4, 2))
    with pytest.raises(ValueError, match="out_grid"):
        pool_tokens(tokens, grid, out_grid=(4, 4, 4))


@pytest.mark.slow
def test_compile_blocks_keeps_outputs_and_parameter_names():
    from vjepa_adapt.models.vjepa import (
        apply_performance_switches,
        build_model,
        encode_full,
    )

    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, pred_hidden_size=32, pred_num_hidden_layers=1,
                        pred_num_attention_heads=2)
    video = torch.randn(1, 8, 3, 32, 32)
    names = list(model.state_dict())
    with torch.no_grad():
        ref = encode_full(model.encoder, video)
    apply_performance_switches(model, gradient_checkpointing=True, compile=True)
    assert list(model.state_dict()) == names  # checkpoints unchanged by compiling
    with torch.no_grad():
        torch.testing.assert_close(encode_full(model.encoder, video), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ input transform


def test_frame_difference_by_hand():
    # one pixel, one channel: frames 1, 3, 6, 10 -> differences 2, 3, 4, the first repeated, x2
    video = torch.tensor([1.0, 3.0, 6.0, 10.0]).view(1, 4, 1, 1, 1)
    out = vjepa.frame_difference(video)
    assert out.flatten().tolist() == [4.0, 4.0, 6.0, 8.0]
    with pytest.raises(ValueError, match="at least 2 frames"):
        vjepa.frame_difference(video[:, :1])


def test_a_frame_diff_model_sees_only_change_and_an_rgb_model_sees_the_frames():
    diff_model, rgb_model = _tiny(input_transform="frame_diff"), _tiny()
    static_a = torch.full((1, FRAMES, 3, CROP, CROP), 0.3)
    static_b = torch.full((1, FRAMES, 3, CROP, CROP), -1.2)
    with torch.no_grad():
        # two different still videos are the same input to a difference model (no change) ...
        assert torch.equal(encode_full(diff_model.encoder, static_a), encode_full(diff_model.encoder, static_b))
        # ... and different inputs to an RGB model
        assert not torch.allclose(encode_full(rgb_model.encoder, static_a), encode_full(rgb_model.encoder, static_b))
        # the student path applies the same transform: all-token context == full forward
        v = _video(1)
        n = _num_tokens(diff_model)
        ids = torch.arange(n).unsqueeze(0)
        torch.testing.assert_close(encode_context(diff_model.encoder, v, ids), encode_full(diff_model.encoder, v))


def test_the_input_transform_travels_with_exported_weights(tmp_path):
    model = _tiny(input_transform="frame_diff")
    export_encoder(model, tmp_path / "enc")
    loaded, _ = load_model(tmp_path / "enc", crop_size=CROP, frames_per_clip=FRAMES)
    assert vjepa.input_transform(loaded.config) == "frame_diff"
    v = _video(1)
    with torch.no_grad():
        torch.testing.assert_close(encode_full(loaded.encoder, v), encode_full(model.encoder, v))
    with pytest.raises(ValueError, match="input_transform"):
        build_config("tiny", input_transform="optical_flow")
