"""The transformer pieces of chapter 08: patchify inverts, 2D position codes are distinct and
bounded, QK-norm gives unit-RMS queries and keys, adaLN-Zero blocks start as the identity, and
the MM-DiT block attends jointly across its two streams."""

import pytest
import torch
from weights import randomize

from nbutils.nn import transformer as tf


def g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("patch", [1, 2, 4, 7])
def test_unpatchify_inverts_patchify(patch):
    x = torch.randn(3, 2, 28, 28, generator=g(0))
    tokens = tf.patchify(x, patch)
    assert tokens.shape == (3, (28 // patch) ** 2, 2 * patch * patch)
    assert torch.equal(tf.unpatchify(tokens, patch, (2, 28, 28)), x)
    if patch == 2:  # row-major: the second token is the patch right of the first
        assert torch.equal(tokens[0, 1].reshape(2, 2, 2), x[0, :, 0:2, 2:4])


def test_2d_position_embeddings_are_distinct_and_bounded():
    code = tf.sincos_2d(7, 5, 32)
    assert code.shape == (35, 32) and code.abs().max() <= 1
    distances = torch.cdist(code, code) + torch.eye(35) * 1e3
    assert distances.min() > 0.1  # every grid position has its own vector
    same_row = code.reshape(7, 5, 32)[:, :, :16]  # the row half ignores the column
    assert torch.allclose(same_row, same_row[:, :1].expand_as(same_row))


def test_qk_norm_gives_unit_rms_queries_and_keys():
    attn = tf.Attention(32, heads=4, qk_norm=True)
    randomize(attn, scale=3.0, seed=1)
    with torch.no_grad():
        attn.q_norm.weight.fill_(1.0)
        attn.k_norm.weight.fill_(1.0)
        q, k, _ = attn.qkv_heads(10 * torch.randn(2, 9, 32, generator=g(2)))
    for t in (q, k):
        torch.testing.assert_close(t.pow(2).mean(-1).sqrt(), torch.ones(t.shape[:-1]), atol=1e-4,
                                   rtol=0)  # fmt: skip
    plain = tf.Attention(32, heads=4)
    plain.load_state_dict(attn.state_dict(), strict=False)
    x = torch.randn(2, 9, 32, generator=g(3))
    with torch.no_grad():  # logits of unit-RMS heads are bounded by sqrt(head_dim)
        assert attn.logits(100 * x).abs().max() <= 8**0.5 + 1e-4
        assert plain.logits(100 * x).abs().max() > 10


def test_adaln_zero_blocks_start_as_the_identity():
    x, c, cond = (torch.randn(2, n, 16, generator=g(4)) for n in (6, 3, 1))
    cond = cond[:, 0]
    torch.testing.assert_close(tf.DiTBlock(16, 2, 16)(x, cond), x)
    out_x, out_c = tf.MMDiTBlock(16, 2, 16, qk_norm=True)(x, c, cond)
    torch.testing.assert_close(out_x, x)
    torch.testing.assert_close(out_c, c)


def test_the_mmdit_block_attends_jointly_across_its_streams():
    block = tf.MMDiTBlock(16, 2, 16)
    randomize(block, scale=0.5, seed=5)
    x, c = torch.randn(2, 6, 16, generator=g(6)), torch.randn(2, 3, 16, generator=g(7))
    cond = torch.randn(2, 16, generator=g(8))
    with torch.no_grad():
        out_x, out_c = block(x, c, cond)
        other_x, _ = block(x, torch.zeros_like(c), cond)  # the label tokens masked out
    assert out_x.shape == x.shape and out_c.shape == c.shape
    assert (out_x - other_x).abs().max() > 1e-3  # the image stream sees the context


def test_attention_is_softmax_of_its_logits_times_the_values():
    attn = tf.Attention(16, heads=4, qk_norm=True)
    randomize(attn, scale=0.5, seed=12)
    x = torch.randn(2, 5, 16, generator=g(13))
    with torch.no_grad():
        _, _, v = attn.qkv_heads(x)  # (B, heads, N, head_dim)
        heads = attn.logits(x).softmax(-1) @ v
        by_hand = attn.out(heads.permute(0, 2, 1, 3).reshape(2, 5, 16))
        torch.testing.assert_close(attn(x), by_hand, atol=1e-5, rtol=1e-5)


def test_recorded_logits_are_the_largest_logit_magnitude_of_each_attention_call():
    attn = tf.Attention(16, heads=4)
    randomize(attn, scale=0.5, seed=18)
    x = torch.randn(2, 5, 16, generator=g(19))
    with torch.no_grad(), tf.record_logits() as outer:
        attn(x)
        with tf.record_logits() as inner:
            attn(2 * x)
    assert len(outer) == 2 and len(inner) == 1  # nested records both see the inner call
    torch.testing.assert_close(outer[0], attn.logits(x).abs().max(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inner[0], attn.logits(2 * x).abs().max(), atol=1e-5, rtol=1e-5)
    attn(x)  # outside every record: nothing is collected, and no record stays open
    assert len(outer) == 2 and not tf._RECORDS


def test_recorded_logits_of_an_mmdit_block_are_its_joint_logits():
    block = tf.MMDiTBlock(16, 2, 16)
    randomize(block, scale=0.5, seed=20)
    x, c = torch.randn(2, 6, 16, generator=g(21)), torch.randn(2, 3, 16, generator=g(22))
    cond = torch.randn(2, 16, generator=g(23))
    with torch.no_grad(), tf.record_logits() as seen:
        block(x, c, cond)
        mods = [s.modulation(cond) for s in block.streams]
        qk = [s.attn.qkv_heads(tf.modulate(s.norm1(z), m[0], m[1]))[:2]
              for s, m, z in zip(block.streams, mods, (x, c), strict=True)]  # fmt: skip
        q, k = torch.cat([qk[0][0], qk[1][0]], 2), torch.cat([qk[0][1], qk[1][1]], 2)
        joint = (q @ k.transpose(-1, -2)).abs().max() / 8**0.5  # head_dim 8, over all N + M tokens
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], joint, atol=1e-5, rtol=1e-5)


def test_mmdit_with_equal_streams_is_a_dit_over_the_joined_sequence():
    """With the context stream's weights equal to the image stream's, joint attention over
    [x, c] is one DiT block over their concatenation, split back at N: this checks the token
    axis of the join, the split, the heads' reassembly and the modulation order together."""
    block = tf.MMDiTBlock(16, 2, 8, qk_norm=True)
    randomize(block, scale=0.4, seed=14)
    block.streams[1].load_state_dict(block.streams[0].state_dict())
    dit = tf.DiTBlock(16, 2, 8, qk_norm=True)
    dit.load_state_dict(block.streams[0].state_dict())
    x, c = torch.randn(2, 6, 16, generator=g(15)), torch.randn(2, 3, 16, generator=g(16))
    cond = torch.randn(2, 8, generator=g(17))
    with torch.no_grad():
        out_x, out_c = block(x, c, cond)
        joined = dit(torch.cat([x, c], 1), cond)
    torch.testing.assert_close(out_x, joined[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_c, joined[:, 6:], atol=1e-5, rtol=1e-5)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match=r"28x28 is not divisible by the patch size 3.*1, 2, 4, 7"):
        tf.patchify(torch.zeros(1, 1, 28, 28), 3)
    with pytest.raises(ValueError, match=r"7x7 is not divisible by the patch size 0; .* \(1, 7\)"):
        tf.patchify(torch.zeros(1, 4, 7, 7), 0)
    with pytest.raises(ValueError, match="divisible by 4"):
        tf.sincos_2d(4, 4, 30)
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        tf.Attention(30, heads=4)


@pytest.mark.parametrize("joint", [True, False])
def test_the_label_dit_keeps_the_network_contract_and_uses_its_labels(joint):
    from nbutils.nn.dit import LabelDiT
    from nbutils.rectified import flow_matching_loss

    net = LabelDiT((4, 7, 7), patch=1, dim=32, depth=2, heads=2, joint=joint, qk_norm=True)
    x, t = torch.randn(3, 4, 7, 7, generator=g(9)), torch.rand(3, generator=g(10))
    y = torch.tensor([1, 2, 10])  # 10: no label
    assert torch.equal(net(x, t, y), torch.zeros_like(x))  # the output layer starts at zero
    randomize(net, scale=0.2, seed=11)
    with torch.no_grad():
        net.pooled.weight.zero_()  # the label now reaches the image only through its tokens
        out = net(x, t, y)
        other = net(x, t, torch.tensor([7, 2, 10]))
        unlabelled = net(x, t)  # y=None: every label is "no label"
    assert out.shape == x.shape
    assert (out[0] - other[0]).abs().max() > 1e-3 and torch.allclose(out[1:], other[1:])
    torch.testing.assert_close(unlabelled[2], out[2])
    loss = flow_matching_loss(lambda xx, tt: net(xx, tt, y), x)  # chapter 07's loss runs it
    loss.backward()
    assert torch.isfinite(loss) and net.embed.weight.grad.abs().sum() > 0


def test_the_label_dit_refuses_a_patch_that_does_not_divide_the_image():
    from nbutils.nn.dit import LabelDiT

    with pytest.raises(ValueError, match="patch size 3 must divide the image size 28x28"):
        LabelDiT((1, 28, 28), patch=3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\)"):
        LabelDiT((1, 28, 28), patch=4, dim=32, depth=1, heads=2)(
            torch.zeros(2, 1, 32, 32), torch.zeros(2)
        )


def test_qk_norm_keeps_float64_and_obeys_its_logit_bound():
    """Normalised queries and keys stay in float64 when the model is, and every logit obeys
    |l| <= sqrt(d_h) max|g_q| max|g_k| (note 08, sd3-qkbound), however large the weights."""
    attn = tf.Attention(16, heads=4, qk_norm=True).double()
    randomize(attn, scale=5.0, seed=24)
    x = torch.randn(2, 5, 16, generator=g(25), dtype=torch.float64)
    q, k, _ = attn.qkv_heads(x)
    assert q.dtype == torch.float64 and k.dtype == torch.float64
    bound = 4**0.5 * attn.q_norm.weight.abs().max() * attn.k_norm.weight.abs().max()
    assert attn.logits(x).abs().max() <= bound * (1 + 1e-9)
