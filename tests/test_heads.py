"""Heads: shapes, invariances, hand-counted parameter numbers."""

import pytest
import torch

from vjepa_adapt.models.heads import (
    AttentiveProbe,
    LinearProbe,
    MotionAuxHead,
    default_num_heads,
)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_attentive_probe_shapes(depth):
    torch.manual_seed(0)
    probe = AttentiveProbe(32, 5, depth=depth)
    assert probe(torch.randn(3, 7, 32)).shape == (3, 5)
    assert len(probe.blocks) == depth


def test_attentive_probe_param_count_by_hand():
    # D=8, K=3, mlp 4x, depth 1. One block: attention q 8*8+8, kv 8*16+16, proj 8*8+8 = 288;
    # MLP 8*32+32 + 32*8+8 = 552; two LayerNorms 2*16 = 32 -> 872. Self block + cross block = 1744,
    # + query 8 + final norm 16 + classifier 8*3+3 = 27 -> 1795.
    probe = AttentiveProbe(8, 3, depth=1, num_heads=2)
    assert n_params(probe) == 1795
    assert n_params(AttentiveProbe(8, 3, depth=0, num_heads=2)) == 1795 - 872
    # hidden_dim projection 8 -> 16 adds 8*16+16; every block is now 16 wide.
    assert n_params(AttentiveProbe(8, 3, depth=0, num_heads=2, hidden_dim=16)) > n_params(AttentiveProbe(8, 3, depth=0, num_heads=2))


def test_attentive_probe_is_a_set_function_and_batch_independent():
    # No positional embedding: token order must not matter; samples must not see each other.
    torch.manual_seed(0)
    probe = AttentiveProbe(16, 4, depth=2, num_heads=2).eval()
    x = torch.randn(4, 6, 16)
    out = probe(x)
    perm = torch.randperm(6)
    torch.testing.assert_close(probe(x[:, perm]), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probe(x[1:2]), out[1:2], atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[0] += torch.randn(6, 16)  # (a constant shift would be removed by the LayerNorms)
    torch.testing.assert_close(probe(x2)[1:], out[1:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(probe(x2)[0], out[0])


def test_attentive_probe_every_parameter_gets_gradient():
    torch.manual_seed(0)
    probe = AttentiveProbe(16, 4, depth=1, num_heads=2)
    loss = torch.nn.functional.cross_entropy(probe(torch.randn(5, 3, 16)), torch.tensor([0, 1, 2, 3, 0]))
    loss.backward()
    for name, p in probe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attentive_probe_rejects_bad_input():
    probe = AttentiveProbe(16, 4, num_heads=2)
    with pytest.raises(ValueError, match="tokens"):
        probe(torch.randn(2, 16))
    with pytest.raises(ValueError, match="divisible"):
        AttentiveProbe(10, 4, num_heads=3)
    with pytest.raises(ValueError):
        AttentiveProbe(16, 4, depth=-1)


def test_default_num_heads():
    assert default_num_heads(1408) == 16  # ViT-g: 16 heads of 88, as in the V-JEPA probe
    assert default_num_heads(1024) == 16
    assert default_num_heads(64) == 2
    assert default_num_heads(30) == 1


def test_linear_probe():
    torch.manual_seed(0)
    for norm in ("batchnorm", "layernorm", "none"):
        probe = LinearProbe(12, 3, norm=norm)
        assert n_params(probe) == 12 * 3 + 3  # the norms have no affine parameters
        assert probe(torch.randn(4, 12)).shape == (4, 3)
        assert probe(torch.randn(4, 5, 12)).shape == (4, 3)  # tokens are averaged
    with pytest.raises(ValueError, match="norm"):
        LinearProbe(12, 3, norm="group")


def test_motion_aux_head_vitg_param_count_by_hand():
    # Linear 1408*256+256 = 360,704; LayerNorm 512; cls 256*8+8 = 2,056; reg 256*13+13 = 3,341.
    head = MotionAuxHead(1408, 8, reg_dims=13)
    assert n_params(head) == 360_704 + 512 + 2_056 + 3_341 == 366_613


def test_motion_aux_head_outputs_and_hidden_is_mode_independent():
    torch.manual_seed(0)
    head = MotionAuxHead(32, 8, reg_dims=23, hidden=64, dropout=0.5)
    x = torch.randn(6, 32)
    logits, reg, hidden = head.train()(x)
    assert logits.shape == (6, 8) and reg.shape == (6, 23) and hidden.shape == (6, 64)
    _, _, hidden_eval = head.eval()(x)
    torch.testing.assert_close(hidden, hidden_eval)  # dropout acts after the returned hidden
    # (B, N, D) input is mean-pooled
    torch.testing.assert_close(head(x[:, None, :].expand(6, 3, 32))[0], head(x)[0])
    with pytest.raises(ValueError):
        head(torch.randn(6, 31))
