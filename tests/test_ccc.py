"""Unit tests of the ccc-wav2vec 2.0 objective on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from quamba_edge.errors import QuambaEdgeError
from quamba_edge.train.ccc import (
    AugmentConfig,
    CCCConfig,
    add_noise_at_snr,
    augment,
    ccc_loss,
    cluster_negative_weights,
    cluster_targets,
    contrastive_logits,
    contrastive_loss,
    cosine_kmeans,
    diversity_loss,
    feature_penalty,
    gather_negative_ids,
    num_clusters,
    sample_negatives,
    wav2vec2_loss,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    noise = noisy.double() - clean.double()
    return 10.0 * math.log10(float(clean.double().pow(2).mean() / noise.pow(2).mean()))


# --- negatives ------------------------------------------------------------------------------------------------------


def test_negatives_never_the_positive_and_within_length():
    B, T, D, K = 3, 12, 4, 50
    targets = torch.randn(B, T, D, generator=gen())
    lengths = torch.tensor([12, 7, 2])
    negs, idx = sample_negatives(targets, K, lengths, gen(1))
    assert negs.shape == (K, B, T, D) and idx.shape == (K, B, T)
    t = torch.arange(T)[None, None, :]
    valid_t = t < lengths[None, :, None]
    assert not ((idx == t) & valid_t).any(), "a valid frame drew itself as a negative"
    assert (idx < lengths[None, :, None]).all(), "a negative came from the padding"
    # The gathered vectors are the targets of the same utterance at those indices.
    for b in range(B):
        torch.testing.assert_close(negs[:, b], targets[b][idx[:, b]])
    # Uniform over the *other* frames: with many draws every other frame of utterance 0 shows up for frame 3.
    assert set(idx[:, 0, 3].tolist()) == set(range(12)) - {3}
    # Length 2: the only candidate is the other frame.
    assert (idx[:, 2, 0] == 1).all() and (idx[:, 2, 1] == 0).all()


def test_negatives_from_a_mask_stay_in_the_mask_and_are_seeded():
    B, T, D, K = 2, 20, 3, 30
    targets = torch.randn(B, T, D, generator=gen())
    mask = torch.rand(B, T, generator=gen(2)) < 0.5
    mask[:, :2] = True
    _, idx = sample_negatives(targets, K, mask, gen(3))
    rows = torch.arange(B)[None, :, None].expand_as(idx)
    assert mask[rows, idx].all(), "a negative came from an unmasked frame"
    t = torch.arange(T)[None, None, :]
    assert not ((idx == t) & mask[None]).any()
    _, idx2 = sample_negatives(targets, K, mask, gen(3))
    _, idx3 = sample_negatives(targets, K, mask, gen(4))
    assert torch.equal(idx, idx2) and not torch.equal(idx, idx3)


def test_negatives_need_two_valid_frames():
    with pytest.raises(QuambaEdgeError):
        sample_negatives(torch.randn(2, 5, 3), 4, torch.tensor([5, 1]), gen())


# --- logits and loss ------------------------------------------------------------------------------------------------


def test_logit_zero_is_the_positive_cosine_over_temperature():
    B, T, D, K = 2, 3, 5, 4
    ctx, pos = torch.randn(B, T, D, generator=gen(1)), torch.randn(B, T, D, generator=gen(2))
    negs = torch.randn(K, B, T, D, generator=gen(3))
    logits = contrastive_logits(ctx, pos, negs, temperature=0.1)
    assert logits.shape == (B, T, 1 + K)
    for b in range(B):
        for t in range(T):
            c = ctx[b, t]
            expect_pos = float(c @ pos[b, t] / (c.norm() * pos[b, t].norm())) / 0.1
            assert logits[b, t, 0].item() == pytest.approx(expect_pos, rel=1e-5, abs=1e-5)
            for k in range(K):
                n = negs[k, b, t]
                assert logits[b, t, 1 + k].item() == pytest.approx(
                    float(c @ n / (c.norm() * n.norm())) / 0.1, rel=1e-5, abs=1e-5
                )


def test_a_negative_identical_to_the_positive_is_minus_inf():
    ctx, pos = torch.randn(1, 2, 4, generator=gen(1)), torch.randn(1, 2, 4, generator=gen(2))
    negs = torch.randn(3, 1, 2, 4, generator=gen(3))
    negs[1, 0, 1] = pos[0, 1]
    logits = contrastive_logits(ctx, pos, negs)
    assert logits[0, 1, 2] == float("-inf")
    assert torch.isfinite(logits[0, 0]).all() and torch.isfinite(logits[0, 1, [0, 1, 3]]).all()


def test_cluster_scaling_hits_exactly_the_same_cluster_negatives():
    B, T, D, K = 1, 6, 4, 3
    ctx, targets = torch.randn(B, T, D, generator=gen(1)), torch.randn(B, T, D, generator=gen(2))
    ids = torch.tensor([[0, 0, 1, 1, 2, 2]])
    idx = torch.tensor([[[1, 0, 3, 2, 5, 4]], [[2, 2, 0, 0, 0, 0]], [[5, 3, 1, 5, 0, 2]]])  # (K, B, T)
    neg_ids = gather_negative_ids(ids, idx)
    assert torch.equal(neg_ids[0], ids), "negative k=0 is each frame's cluster partner"
    w = cluster_negative_weights(ids, neg_ids, 0.3)
    same = torch.zeros(K, B, T, dtype=torch.bool)
    same[0] = True  # k=1 and k=2 point at frames of other clusters everywhere (checked by hand)
    expected = torch.where(same, torch.tensor(0.3), torch.tensor(1.0))
    torch.testing.assert_close(w, expected)
    negs = targets[torch.arange(B)[None, :, None], idx]
    plain = contrastive_logits(ctx, targets, negs, 0.1)
    scaled = contrastive_logits(ctx, targets, negs, 0.1, w)
    torch.testing.assert_close(scaled[..., 0], plain[..., 0])
    torch.testing.assert_close(scaled[..., 1], plain[..., 1] * 0.3)
    torch.testing.assert_close(scaled[..., 2:], plain[..., 2:])


def test_contrastive_loss_small_when_right_large_when_wrong():
    B, T, K = 1, 4, 3
    eye = torch.eye(K + 1)
    pos = eye[0].expand(B, T, K + 1).clone()
    negs = eye[1:].view(K, 1, 1, K + 1).expand(K, B, T, K + 1).clone()  # orthogonal to the positive
    mask = torch.ones(B, T, dtype=torch.bool)
    good = contrastive_loss(contrastive_logits(pos, pos, negs, 0.1), mask)
    assert good.item() == pytest.approx(math.log(1 + K * math.exp(-10.0)), rel=1e-2)
    assert good.item() < 1e-3
    wrong_ctx = negs[0]  # the context points at a negative
    bad = contrastive_loss(contrastive_logits(wrong_ctx, pos, negs, 0.1), mask)
    assert bad.item() > 9.0


def test_contrastive_loss_uses_only_masked_frames():
    logits = torch.randn(2, 5, 4, generator=gen())
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    loss = contrastive_loss(logits, mask)
    expected = F.cross_entropy(torch.stack([logits[0, 1], logits[1, 3]]), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(loss, expected)
    changed = logits.clone()
    changed[~mask] = 100.0
    torch.testing.assert_close(contrastive_loss(changed, mask), loss)
    with pytest.raises(QuambaEdgeError):
        contrastive_loss(logits, torch.zeros(2, 5, dtype=torch.bool))


# --- clustering -----------------------------------------------------------------------------------------------------


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    centres = torch.eye(4, 16) * 5.0
    labels = torch.arange(4).repeat_interleave(25)
    x = centres[labels] + 0.3 * torch.randn(100, 16, generator=g)
    x = x * torch.rand(100, 1, generator=g).add(0.5)  # random norms: cosine k-means must ignore them
    perm = torch.randperm(100, generator=g)
    return x[perm], labels[perm]


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    x, labels = _blobs()
    assign, centroids = cosine_kmeans(x, 4, iters=50, generator=gen(7))
    assert assign.shape == (100,) and centroids.shape == (4, 16)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(4))
    # Same partition up to renaming: each true cluster maps to one id and the four ids are distinct.
    mapping = {int(lab): set(assign[labels == lab].tolist()) for lab in range(4)}
    assert all(len(ids) == 1 for ids in mapping.values())
    assert len({next(iter(ids)) for ids in mapping.values()}) == 4
    again, c2 = cosine_kmeans(x, 4, iters=50, generator=gen(7))
    assert torch.equal(assign, again) and torch.equal(centroids, c2)


def test_kmeans_works_on_directions_only():
    """Rescaling rows must not change anything: the clustering is of L2-normalised vectors (cosine distance)."""
    x = torch.randn(60, 5, generator=gen(1))  # no cluster structure, so the result depends on every detail
    scales = torch.rand(60, 1, generator=gen(2)) * 20 + 0.05
    a1, c1 = cosine_kmeans(x, 4, iters=30, generator=gen(3))
    a2, c2 = cosine_kmeans(x * scales, 4, iters=30, generator=gen(3))
    assert torch.equal(a1, a2)
    torch.testing.assert_close(c1, c2)


def test_num_clusters_and_cluster_targets_follow_the_fork():
    mask = torch.zeros(2, 100, dtype=torch.bool)
    mask[:, :64] = True
    assert num_clusters(mask, 16) == 4
    assert num_clusters(torch.arange(40).expand(2, 40) < 20, 16) == 2  # 20 // 16 = 1, floored at 2
    x, _ = _blobs()
    targets = torch.zeros(2, 100, 16)
    targets[mask] = x[:64].repeat(2, 1)
    ids, aug_ids = cluster_targets(targets, targets.clone(), mask, 16, 20, gen(1))
    assert (ids[~mask] == -1).all() and (aug_ids[~mask] == -1).all()
    assert torch.equal(ids, aug_ids), "identical vectors in the two views must share a cluster"
    assert set(ids[mask].tolist()) <= set(range(4))


# --- auxiliary terms ------------------------------------------------------------------------------------------------


def test_diversity_loss_and_feature_penalty():
    assert diversity_loss(torch.tensor(640.0), 640).item() == pytest.approx(0.0)
    assert diversity_loss(1.0, 640).item() == pytest.approx(639 / 640)
    assert diversity_loss(320.0, 640).item() == pytest.approx(0.5)
    f = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    assert feature_penalty(f).item() == pytest.approx((1 + 4 + 9 + 0) / 4)


# --- full objectives ------------------------------------------------------------------------------------------------


def _views(B: int = 2, T: int = 24, D: int = 8, codes: int = 0):
    """Two random views; with ``codes`` > 0 the targets come from a small codebook, so a frame's negatives often
    equal its positive, as with Gumbel-quantized targets."""
    g = gen(11)
    ctx, actx = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    tgt, atgt = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    if codes:
        book = torch.randn(codes, D, generator=g)
        tgt = book[torch.randint(0, codes, (B, T), generator=g)]
        atgt = book[torch.randint(0, codes, (B, T), generator=g)]
    mask = torch.rand(B, T, generator=g) < 0.6
    mask[:, :3] = True
    return ctx, actx, tgt, atgt, mask


@pytest.mark.parametrize("codes", [0, 5])
def test_cross_terms_use_the_other_views_targets(codes):
    ctx, actx, tgt, atgt, mask = _views(codes=codes)
    cfg = CCCConfig(n_negatives=7, scale_factor=0.3)
    _, idx = sample_negatives(tgt, 7, mask, gen(1))
    _, aidx = sample_negatives(atgt, 7, mask, gen(2))
    ids = torch.randint(0, 3, mask.shape, generator=gen(3))
    aids = torch.randint(0, 3, mask.shape, generator=gen(4))
    _, parts = ccc_loss(ctx, actx, tgt, atgt, mask, cfg=cfg, neg_indices=(idx, aidx), cluster_ids=(ids, aids))
    rows = torch.arange(2)[None, :, None]
    w = cluster_negative_weights(ids, gather_negative_ids(ids, idx))
    aw = cluster_negative_weights(aids, gather_negative_ids(aids, aidx))
    by_hand_oa = contrastive_loss(contrastive_logits(ctx, atgt, atgt[rows, aidx], 0.1, aw), mask)
    by_hand_ao = contrastive_loss(contrastive_logits(actx, tgt, tgt[rows, idx], 0.1, w), mask)
    by_hand_c = contrastive_loss(contrastive_logits(ctx, tgt, tgt[rows, idx], 0.1, w), mask)
    assert parts["cross_orig_to_aug"] == pytest.approx(by_hand_oa.item(), rel=1e-6)
    assert parts["cross_aug_to_orig"] == pytest.approx(by_hand_ao.item(), rel=1e-6)
    assert parts["contrastive"] == pytest.approx(by_hand_c.item(), rel=1e-6)
    assert parts["cross_orig_to_aug"] != pytest.approx(parts["contrastive"], rel=1e-3)
    if codes:
        assert (tgt[rows, idx] == tgt.unsqueeze(0)).all(-1).any(), "the codebook case must hit the -inf path"

    # Swapping the views swaps the two cross terms.
    _, swapped = ccc_loss(actx, ctx, atgt, tgt, mask, cfg=cfg, neg_indices=(aidx, idx), cluster_ids=(aids, ids))
    assert swapped["cross_orig_to_aug"] == pytest.approx(parts["cross_aug_to_orig"], rel=1e-6)
    assert swapped["cross_aug_to_orig"] == pytest.approx(parts["cross_orig_to_aug"], rel=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 0.5, 0.5), (2.0, 3.0, 5.0)])
def test_weights_are_applied(weights):
    ctx, actx, tgt, atgt, mask = _views()
    cfg = CCCConfig(n_negatives=5, cc_weights=weights, cluster_factor=4)
    feats = torch.randn(2, 4, 30, generator=gen(5))
    total, p = ccc_loss(
        ctx,
        actx,
        tgt,
        atgt,
        mask,
        generator=gen(6),
        cfg=cfg,
        perplexity=torch.tensor(200.0),
        num_vars_total=640,
        features=feats,
    )
    a, b, c = weights
    expected = (
        a * p["contrastive"]
        + b * p["cross_orig_to_aug"]
        + c * p["cross_aug_to_orig"]
        + 0.1 * p["diversity"]
        + 10.0 * p["feature_penalty"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert p["total"] == pytest.approx(total.item())
    assert p["diversity"] == pytest.approx((640 - 200) / 640)
    assert p["feature_penalty"] == pytest.approx(feats.pow(2).mean().item(), rel=1e-6)


def test_a_scalar_feature_penalty_is_taken_as_is():
    ctx, actx, tgt, atgt, mask = _views()
    cfg = CCCConfig(n_negatives=5, scale_factor=1.0)
    feats = torch.randn(2, 4, 30, generator=gen(5))
    _, from_feats = wav2vec2_loss(ctx, tgt, mask, generator=gen(1), cfg=cfg, features=feats)
    _, from_scalar = wav2vec2_loss(ctx, tgt, mask, generator=gen(1), cfg=cfg, features=feature_penalty(feats))
    assert from_scalar["feature_penalty"] == pytest.approx(from_feats["feature_penalty"], rel=1e-6)
    assert from_scalar["total"] == pytest.approx(from_feats["total"], rel=1e-6)


def test_default_weights_are_the_forks():
    cfg = CCCConfig()
    assert cfg.cc_weights == (1.0, 0.5, 0.5)
    assert (cfg.n_negatives, cfg.temperature, cfg.cluster_factor, cfg.scale_factor) == (100, 0.1, 16, 0.3)
    assert (cfg.diversity_weight, cfg.feature_penalty_weight) == (0.1, 10.0)


def test_ccc_loss_is_seeded_and_differentiable():
    ctx, actx, tgt, atgt, mask = _views()
    ctx.requires_grad_(True)
    tgt.requires_grad_(True)
    cfg = CCCConfig(n_negatives=6, cluster_factor=4)
    total, p1 = ccc_loss(ctx, actx, tgt, atgt, mask, generator=gen(9), cfg=cfg)
    _, p2 = ccc_loss(ctx, actx, tgt, atgt, mask, generator=gen(9), cfg=cfg)
    assert p1 == p2
    assert 0.0 < p1["same_cluster_negatives"] < 1.0
    total.backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert tgt.grad is not None and tgt.grad.abs().sum() > 0


def test_wav2vec2_baseline_matches_the_plain_term():
    ctx, actx, tgt, atgt, mask = _views()
    cfg = CCCConfig(n_negatives=5, scale_factor=1.0)  # no clustering
    _, idx = sample_negatives(tgt, 5, mask, gen(1))
    _, aidx = sample_negatives(atgt, 5, mask, gen(2))
    _, ccc_parts = ccc_loss(ctx, actx, tgt, atgt, mask, cfg=cfg, neg_indices=(idx, aidx))
    total, base = wav2vec2_loss(ctx, tgt, mask, cfg=cfg, neg_indices=idx, perplexity=320.0, num_vars_total=640)
    assert base["contrastive"] == pytest.approx(ccc_parts["contrastive"], rel=1e-6)
    assert total.item() == pytest.approx(base["contrastive"] + 0.1 * 0.5, rel=1e-6)
    assert "cross_orig_to_aug" not in base


# --- augmentation ---------------------------------------------------------------------------------------------------


def _speechlike(B: int = 2, S: int = 8000) -> torch.Tensor:
    t = torch.arange(S) / 16000
    f0 = torch.tensor([140.0, 220.0])[:B, None]
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    return 0.3 * env * (torch.sin(2 * math.pi * f0 * t) + 0.5 * torch.sin(2 * math.pi * 3 * f0 * t))


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_add_noise_hits_the_snr(snr):
    x = _speechlike()[0]
    y = add_noise_at_snr(x, snr, gen(1))
    assert y.shape == x.shape
    assert snr_db(x, y) == pytest.approx(snr, abs=1e-3)


def test_augment_noise_step_hits_its_drawn_snr():
    x = _speechlike()
    cfg = AugmentConfig(noise_p=1.0, noise_ratio_range=(0.1, 0.1), reverb_p=0.0, background_p=0.0)
    y = augment(x, gen(2), cfg)
    for b in range(2):
        assert snr_db(x[b], y[b]) == pytest.approx(20.0, abs=1e-3)  # ratio 0.1 -> 20 dB
    bank = torch.randn(3, 20000, generator=gen(3))
    cfg_bg = AugmentConfig(noise_p=0.0, reverb_p=0.0, background_p=1.0, background_snr_db_range=(5.0, 5.0))
    y = augment(x, gen(4), cfg_bg, noise_bank=bank)
    for b in range(2):
        assert snr_db(x[b], y[b]) == pytest.approx(5.0, abs=1e-3)


def test_augment_keeps_shape_is_seeded_and_leaves_padding_alone():
    x = _speechlike()
    cfg = AugmentConfig(noise_p=1.0, reverb_p=1.0, background_p=1.0, speed_p=1.0, speed_factors=(0.9,))
    lengths = torch.tensor([8000, 5000])
    x[1, 5000:] = 0.0
    y = augment(x, gen(5), cfg, lengths=lengths)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert (y[1, 5000:] == 0).all()
    assert not torch.allclose(y[:, :5000], x[:, :5000])
    assert torch.equal(y, augment(x, gen(5), cfg, lengths=lengths))
    assert not torch.equal(y, augment(x, gen(6), cfg, lengths=lengths))


def test_augment_with_everything_off_is_the_identity_and_rejects_bad_input():
    x = _speechlike()
    off = AugmentConfig(noise_p=0.0, reverb_p=0.0, background_p=0.0)
    assert torch.equal(augment(x, gen(), off), x)
    with pytest.raises(QuambaEdgeError):
        augment(x[0], gen())
