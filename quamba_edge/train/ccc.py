"""The ccc-wav2vec 2.0 pre-training objective as pure functions on tensors.

ccc-wav2vec 2.0 (Lodagala, Ghosh, Umesh, SLT 2022; code: github.com/Speech-Lab-IITM/CCC-wav2vec-2.0) adds to
wav2vec 2.0 a *cross-contrastive* loss between an utterance and an augmented copy of it (the context of one view must
pick out the quantized target of the other) and a *clustering* module that down-weights negatives in their
positive's k-means cluster (probably the same phone, so pushing them away is noise). Inputs are encoder and Gumbel
quantizer outputs as plain tensors; every default follows the public fork (each docstring gives file and line).

Shapes: ``B`` utterances, ``T`` frames, ``D`` feature width, ``K`` negatives per position. ``mask`` is the boolean
(B, T) time mask of wav2vec 2.0; the loss is computed at masked frames only and, as in the fork, negatives are drawn
from the masked frames of the same utterance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quamba_edge.errors import QuambaEdgeError

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class CCCConfig:
    """Hyper-parameters of the objective; defaults are the fork's BASE LibriSpeech recipe.

    ``cc_weights`` = (alpha, beta, gamma): plain contrastive, original context -> augmented targets, augmented
    context -> original targets (criterion ``cc_weights: [1, 0.5, 0.5]``, wav2vec2_base_librispeech.yaml:34).
    ``cluster_factor`` 16 and ``scale_factor`` 0.3 (same yaml:59-60): k = max(2, masked frames per utterance // 16)
    and same-cluster negative logits are multiplied by 0.3. ``diversity_weight``/``feature_penalty_weight`` are the
    criterion's ``loss_weights: [0.1, 10]`` (yaml:33). ``kmeans_iters`` is fast-pytorch-kmeans' default max_iter,
    which the fork does not override. ``n_negatives`` 100 and ``temperature`` 0.1 are stock wav2vec 2.0.
    """

    n_negatives: int = 100
    temperature: float = 0.1
    cc_weights: tuple[float, float, float] = (1.0, 0.5, 0.5)
    cluster_factor: int = 16
    scale_factor: float = 0.3
    kmeans_iters: int = 100
    diversity_weight: float = 0.1
    feature_penalty_weight: float = 10.0


def _rand(draw, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``draw`` (torch.rand/randn) on the generator's device, then moved: a CPU generator drives GPU tensors alike."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return draw(shape, generator=generator, device=gen_device).to(device)


# Negatives and logits -------------------------------------------------------------------------------------------------
def _negative_indices(mask: torch.Tensor, n_negatives: int, generator: torch.Generator | None) -> torch.Tensor:
    """:func:`sample_negatives`' draw: (K, B, T) indices of valid frames of ``mask`` (B, T), never the frame itself."""
    if n_negatives < 1:
        raise QuambaEdgeError(f"n_negatives must be >= 1, got {n_negatives}")
    (batch, steps), device = mask.shape, mask.device
    counts = mask.sum(dim=1)
    if (counts < 2).any():
        raise QuambaEdgeError(f"every utterance needs at least 2 valid frames to draw negatives from, got counts "
                              f"{counts.tolist()}")
    with torch.no_grad():
        # Valid time indices first (in time order) so ``order[b, r]`` is the r-th valid frame of utterance b.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        rank = torch.cumsum(mask.long(), dim=1) - 1  # rank of each valid frame among the valid ones
        high = (counts[:, None] - mask.long()).expand(n_negatives, batch, steps)  # a valid frame excludes itself
        r = (_rand(torch.rand, (n_negatives, batch, steps), generator, device) * high).floor().long()
        r = torch.minimum(r, high - 1)  # guard the u -> 1.0 rounding edge
        r = r + ((r >= rank) & mask).long()
        return torch.gather(order.expand(n_negatives, batch, steps), 2, r)


def sample_negatives(targets: torch.Tensor, n_negatives: int, valid: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_negatives`` distractors for every frame from *other* valid frames of the same utterance.

    Mirrors wav2vec 2.0's ``sample_negatives`` (fork wav2vec2.py:496-552): uniform with replacement over the
    candidate frames, skipping the positive's own index by drawing from ``count - 1`` and shifting draws at or past
    it by one. ``valid`` is None (all frames), a bool (B, T) mask (pass the time mask to reproduce the fork: its
    negatives come from masked frames) or integer (B,) lengths (to exclude padding). Frames that are not valid still
    get negatives (from the valid frames) so shapes stay dense; the loss ignores them.

    Returns ``negatives`` (K, B, T, D) (fairseq's layout; gradients flow into ``targets``) and ``neg_indices``
    (K, B, T), the time index inside the utterance of each negative.
    """
    if targets.dim() != 3:
        raise QuambaEdgeError(f"targets must be (B, T, D), got shape {tuple(targets.shape)}")
    (batch, steps, _), device = targets.shape, targets.device
    if valid is None:
        mask = torch.ones(batch, steps, dtype=torch.bool, device=device)
    elif valid.dtype == torch.bool:
        if valid.shape != (batch, steps):
            raise QuambaEdgeError(f"valid mask has shape {tuple(valid.shape)}, expected ({batch}, {steps})")
        mask = valid.to(device)
    else:
        if valid.dim() != 1 or valid.shape[0] != batch or valid.is_floating_point():
            raise QuambaEdgeError(f"valid must be a bool (B, T) mask or integer (B,) lengths; got {valid.dtype} "
                                  f"{tuple(valid.shape)}")
        if (valid < 0).any() or (valid > steps).any():
            raise QuambaEdgeError(f"lengths must lie in [0, {steps}], got {valid.tolist()}")
        mask = torch.arange(steps, device=device)[None, :] < valid.to(device)[:, None]
    neg_indices = _negative_indices(mask, n_negatives, generator)
    return targets[torch.arange(batch, device=device)[None, :, None], neg_indices], neg_indices


def gather_negative_ids(ids: torch.Tensor, neg_indices: torch.Tensor) -> torch.Tensor:
    """Per-frame ids (B, T) looked up at the negatives' time indices (K, B, T) -> (K, B, T)."""
    if ids.dim() != 2 or neg_indices.dim() != 3 or neg_indices.shape[1:] != ids.shape:
        raise QuambaEdgeError(f"ids {tuple(ids.shape)} and neg_indices {tuple(neg_indices.shape)} do not match")
    return torch.gather(ids.expand(neg_indices.shape[0], *ids.shape), 2, neg_indices)


def contrastive_logits(context: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                       temperature: float = 0.1, neg_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity / temperature of each context vector to its positive (index 0) and its K negatives.

    As ``compute_preds_scale`` in the fork (wav2vec2.py:554-576): negatives that are *identical* to the positive
    (common with a discrete codebook) get -inf so the model is not asked to tell a code from itself, and
    ``neg_weights`` (K, B, T) multiplies the negative logits, which is how ccc scales same-cluster negatives
    (``index_put_scale`` is ``tensor[idx] *= value``, fairseq/utils.py:748-750). Note that multiplying shrinks a
    logit toward 0: a similar negative loses influence, but a negative-similarity one gains some; that is the fork's
    behaviour and is kept. (The fork applies the scaling only when some negative equals its positive, a side
    effect of its indentation; here it is always applied.)

    Returns logits of shape (B, T, 1 + K), computed in float32.
    """
    if context.dim() != 3 or positives.shape != context.shape or negatives.shape[1:] != context.shape:
        raise QuambaEdgeError(f"context and positives must be (B, T, D) and negatives (K, B, T, D); got "
                              f"{tuple(context.shape)}, {tuple(positives.shape)} and {tuple(negatives.shape)}")
    if temperature <= 0:
        raise QuambaEdgeError(f"temperature must be > 0, got {temperature}")
    # Normalise once and take dot products: the same numbers as F.cosine_similarity (eps 1e-8), but without
    # broadcasting the context against every candidate, which made the backward pass several times slower.
    ctx = F.normalize(context.float(), dim=-1, eps=1e-8)
    pos = (ctx * F.normalize(positives.float(), dim=-1, eps=1e-8)).sum(-1) / temperature  # (B, T)
    neg = torch.einsum("btd,kbtd->kbt", ctx, F.normalize(negatives.float(), dim=-1, eps=1e-8)) / temperature
    if neg_weights is not None:
        if neg_weights.shape != neg.shape:
            raise QuambaEdgeError(f"neg_weights must be (K, B, T) = {tuple(neg.shape)}, got {tuple(neg_weights.shape)}")
        neg = neg * neg_weights.to(neg.dtype)
    neg = neg.masked_fill((positives.unsqueeze(0) == negatives).all(dim=-1), float("-inf"))
    return torch.cat([pos.unsqueeze(0), neg], dim=0).permute(1, 2, 0)


def _masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 3 or mask.shape != logits.shape[:2] or mask.dtype != torch.bool:
        raise QuambaEdgeError(f"logits must be (B, T, C) and mask a bool (B, T); got {tuple(logits.shape)} and "
                              f"{tuple(mask.shape)}")
    if not mask.any():
        raise QuambaEdgeError("the mask selects no frames; there is nothing to predict")
    return logits[mask]


def contrastive_loss(logits: torch.Tensor, mask_positions: torch.Tensor) -> torch.Tensor:
    """InfoNCE: cross-entropy with target 0 (the positive), averaged over the masked frames only.

    The fork's criterion sums over masked frames and fairseq divides by their count (sample_size), which is this mean.
    """
    picked = _masked_logits(logits, mask_positions)
    return F.cross_entropy(picked.float(), picked.new_zeros(picked.shape[0], dtype=torch.long))


def contrastive_accuracy(logits: torch.Tensor, mask_positions: torch.Tensor) -> float:
    """Share of masked frames whose positive scores highest (fairseq's ``correct``: argmax 0 and not also argmin)."""
    with torch.no_grad():
        picked = _masked_logits(logits, mask_positions)
        return float(((picked.argmax(-1) == 0) & (picked.argmin(-1) != 0)).float().mean())


# Clustering -----------------------------------------------------------------------------------------------------------
def cosine_kmeans(x: torch.Tensor, k: int, iters: int = 100,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means: cluster L2-normalised rows of ``x`` (N, D) by cosine similarity.

    The fork uses fast-pytorch-kmeans ``KMeans(mode='cosine')`` with random initial centroids and no seed
    (wav2vec2.py:829). Here the seeding is k-means++ on cosine distance, drawn from ``generator``, so results are
    reproducible and a bad start (two seeds in one true cluster) is unlikely; Lloyd iterations stop early once no
    assignment changes. A cluster that empties keeps its previous centroid.

    Returns ``assignments`` (N,) long and unit-norm ``centroids`` (k, D).
    """
    if x.dim() != 2 or not 1 <= k <= x.shape[0] or iters < 1:
        raise QuambaEdgeError(f"cosine_kmeans needs (N, D) data, 1 <= k <= N and iters >= 1; got data "
                              f"{tuple(x.shape)}, k={k}, iters={iters}")
    n = x.shape[0]
    with torch.no_grad():
        data = F.normalize(x.detach().float(), dim=1)
        u = _rand(torch.rand, (k,), generator, data.device)
        chosen = [int((u[0] * n).floor().clamp_max(n - 1))]
        dist = (1.0 - data @ data[chosen[0]]).clamp_min(0.0)
        for i in range(1, k):
            total = dist.sum()
            # If every point coincides with a centroid, fall back to a uniform pick.
            probs = torch.full_like(dist, 1.0 / n) if total <= 0 else dist / total
            cdf = torch.cumsum(probs, 0)
            idx = int(torch.searchsorted(cdf, (u[i] * cdf[-1]).reshape(1), right=True).clamp_max(n - 1))
            chosen.append(idx)
            dist = torch.minimum(dist, (1.0 - data @ data[idx]).clamp_min(0.0))
        centroids = data[chosen].clone()
        assign = (data @ centroids.T).argmax(dim=1)
        for _ in range(iters):
            sums = torch.zeros_like(centroids).index_add_(0, assign, data)
            filled = (torch.bincount(assign, minlength=k) > 0)[:, None]
            centroids = torch.where(filled, F.normalize(sums, dim=1), centroids)
            new_assign = (data @ centroids.T).argmax(dim=1)
            if torch.equal(new_assign, assign):
                break
            assign = new_assign
    return assign, centroids


def num_clusters(mask: torch.Tensor, cluster_factor: int = 16) -> int:
    """k = max(2, masked frames per utterance // cluster_factor), as the fork's ``x.shape[1] // cluster_factor``.

    In the fork ``x`` has already been gathered at the mask (wav2vec2.py:819, 829), so the count is of *masked*
    frames per utterance (equal across the batch there; the mean here when it is not).
    """
    if cluster_factor < 1:
        raise QuambaEdgeError(f"cluster_factor must be >= 1, got {cluster_factor}")
    return max(2, int(mask.sum()) // max(1, mask.shape[0]) // cluster_factor)


def cluster_targets(targets: torch.Tensor, aug_targets: torch.Tensor, mask: torch.Tensor, cluster_factor: int = 16,
                    iters: int = 100, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the masked targets of both views together; return per-frame cluster ids for each view.

    As the fork (wav2vec2.py:831-842): the quantized (projected) targets of the original and the augmented view at
    the masked frames of the whole batch are L2-normalised and pooled into one k-means run, so "same cluster" means
    the same thing in both views. Unmasked frames get id -1 (negatives are never drawn from them).
    """
    if targets.dim() != 3 or aug_targets.shape != targets.shape or mask.shape != targets.shape[:2]:
        raise QuambaEdgeError("targets and aug_targets must be one (B, T, D) shape and mask (B, T)")
    points = torch.cat([targets[mask], aug_targets[mask]], dim=0)
    assign, _ = cosine_kmeans(points, min(num_clusters(mask, cluster_factor), points.shape[0]), iters, generator)
    ids = torch.full(mask.shape, -1, dtype=torch.long, device=targets.device)
    aug_ids = ids.clone()
    ids[mask], aug_ids[mask] = assign.to(ids.device).split(int(mask.sum()))
    return ids, aug_ids


def cluster_negative_weights(pos_cluster_ids: torch.Tensor, neg_cluster_ids: torch.Tensor,
                             factor: float = 0.3) -> torch.Tensor:
    """Weights (K, B, T): ``factor`` where a negative is in its positive's cluster, else 1.0.

    ``pos_cluster_ids`` is (B, T), ``neg_cluster_ids`` (K, B, T) (see :func:`gather_negative_ids`); the fork's
    ``filter_negs = clus_labels == neg_labels`` (wav2vec2.py:852, 863) with ``scale_factor`` 0.3.
    """
    if neg_cluster_ids.dim() != 3 or neg_cluster_ids.shape[1:] != pos_cluster_ids.shape:
        raise QuambaEdgeError(f"neg_cluster_ids {tuple(neg_cluster_ids.shape)} must be "
                              f"(K, *{tuple(pos_cluster_ids.shape)})")
    if factor <= 0:
        raise QuambaEdgeError(f"the cluster scale factor must be > 0, got {factor}")
    same = neg_cluster_ids == pos_cluster_ids.unsqueeze(0)
    return torch.ones(same.shape, dtype=torch.float32, device=same.device).masked_fill(same, factor)


# Objectives: auxiliary terms, then the full losses --------------------------------------------------------------------
def diversity_loss(perplexity: torch.Tensor | float, num_vars_total: int) -> torch.Tensor:
    """wav2vec 2.0's codebook diversity penalty, (G*V - perplexity) / (G*V): 0 when every code is used equally.

    ``perplexity`` is the quantizer's ``prob_perplexity`` (soft, batch-averaged); ``num_vars_total`` = G*V
    (2*320 in BASE). Fork: ``get_extra_losses``, wav2vec2.py:935-938.
    """
    if num_vars_total <= 0:
        raise QuambaEdgeError(f"num_vars_total (G*V) must be > 0, got {num_vars_total}")
    return (num_vars_total - torch.as_tensor(perplexity, dtype=torch.float32)) / num_vars_total


def feature_penalty(features: torch.Tensor) -> torch.Tensor:
    """Mean squared activation of the convolutional feature encoder output (before layer norm), wav2vec2.py:619.

    Keeps the CNN's outputs from growing without bound; weight 10 in the BASE recipe, 0 in LARGE.
    """
    return features.float().pow(2).mean()


def _check_views(context: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
    if (context.dim() != 3 or targets.shape[:2] != context.shape[:2] or mask.shape != context.shape[:2]
            or mask.dtype != torch.bool):
        raise QuambaEdgeError(f"context (B, T, D), targets (B, T, D) and a bool mask (B, T) must share (B, T); got "
                              f"{tuple(context.shape)}, {tuple(targets.shape)} and {mask.dtype} {tuple(mask.shape)}")
    if not mask.any():
        raise QuambaEdgeError("the mask selects no frames; there is nothing to predict")


def _negatives(idx: torch.Tensor | None, name: str, mask: torch.Tensor, cfg: CCCConfig,
               generator: torch.Generator | None) -> torch.Tensor:
    """The given (K, B, T) negative indices, checked against ``mask``, or a fresh draw from its frames when None."""
    if idx is None:
        return _negative_indices(mask, cfg.n_negatives, generator)
    if idx.dim() != 3 or idx.shape[1:] != mask.shape:
        raise QuambaEdgeError(f"{name} must be (K, B, T) = (K, *{tuple(mask.shape)}), got {tuple(idx.shape)}")
    return idx


def _masked_term(context: torch.Tensor, targets: torch.Tensor, neg_idx: torch.Tensor, weights: torch.Tensor | None,
                 mask: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, M, 1 + K) and loss at the M masked frames only: the numbers of :func:`contrastive_logits` +
    :func:`contrastive_loss` on the full (B, T) grid, leaner: only the masked frames' negatives are gathered
    (K*M*D per term, as in the fork, not K*B*T*D) from targets L2-normalised once, in one batched matmul. A negative
    equals its positive when the normalised vectors are equal: for one code vector, exactly when the raw ones are.
    """
    b, t = mask.nonzero(as_tuple=True)
    unit = F.normalize(targets.float(), dim=-1, eps=1e-8)
    ctx = F.normalize(context[b, t].float(), dim=-1, eps=1e-8)  # (M, D)
    pos = unit[b, t]  # (M, D)
    negs = unit[b.unsqueeze(1), neg_idx[:, b, t].T]  # (M, K, D)
    pos_logit = (ctx * pos).sum(-1, keepdim=True) / temperature  # (M, 1)
    neg_logit = torch.bmm(negs, ctx.unsqueeze(-1)).squeeze(-1) / temperature  # (M, K)
    if weights is not None:
        neg_logit = neg_logit * weights[:, b, t].T.to(neg_logit.dtype)
    with torch.no_grad():
        neg_is_pos = (negs == pos.unsqueeze(1)).all(-1)
    logits = torch.cat([pos_logit, neg_logit.masked_fill(neg_is_pos, float("-inf"))], dim=1)
    return logits.unsqueeze(0), F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))


def _total(cfg: CCCConfig, logits: torch.Tensor, main: torch.Tensor, terms: dict[str, torch.Tensor],
           perplexity: torch.Tensor | float | None, num_vars_total: int | None,
           features: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    """``main`` + weighted diversity and feature penalty, and float parts for logging: the total, ``terms``, the
    accuracy of ``logits`` (1, M, 1 + K), then the auxiliary terms."""
    if (perplexity is None) != (num_vars_total is None):
        raise QuambaEdgeError("pass perplexity and num_vars_total together (the diversity term needs both)")
    extra = main.new_zeros((), dtype=torch.float32)
    aux: dict[str, float] = {}
    if perplexity is not None:
        div = diversity_loss(perplexity, num_vars_total).to(main.device)
        extra = extra + cfg.diversity_weight * div
        aux["diversity"] = float(div.detach())
    if features is not None:
        # A 0-dim tensor is an already-computed penalty (a model may compute it where the features live).
        pen = (features.float() if features.dim() == 0 else feature_penalty(features)).to(main.device)
        extra = extra + cfg.feature_penalty_weight * pen
        aux["feature_penalty"] = float(pen.detach())
    total = main + extra
    parts = {"total": float(total.detach()), **{name: float(v.detach()) for name, v in terms.items()}}
    every = logits.new_ones(logits.shape[:2], dtype=torch.bool)
    return total, {**parts, "accuracy": contrastive_accuracy(logits, every), **aux}


def wav2vec2_loss(context: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
                  generator: torch.Generator | None = None, cfg: CCCConfig = CCCConfig(),
                  perplexity: torch.Tensor | float | None = None, num_vars_total: int | None = None,
                  features: torch.Tensor | None = None,
                  neg_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The plain wav2vec 2.0 baseline: contrastive + diversity + feature penalty, no clustering, no second view.

    Shares every building block with :func:`ccc_loss` so a comparison run differs only in the objective.
    ``context`` (B, T, D) is the final-projected encoder output, ``targets`` (B, T, D) the projected quantized
    targets, both at every frame; ``mask`` (B, T) marks the masked frames (negatives are drawn from them, as in
    wav2vec 2.0). ``features`` is the conv encoder output before layer norm, or a 0-dim tensor holding its
    :func:`feature_penalty`. ``neg_indices`` (K, B, T) overrides the negative draw (tests, or replaying a draw).
    Returns ``(total, parts)``; ``parts`` holds floats for logging.
    """
    _check_views(context, targets, mask)
    idx = _negatives(neg_indices, "neg_indices", mask, cfg, generator)
    logits, lc = _masked_term(context, targets, idx, None, mask, cfg.temperature)
    return _total(cfg, logits, lc, {"contrastive": lc}, perplexity, num_vars_total, features)


def ccc_loss(context: torch.Tensor, aug_context: torch.Tensor, targets: torch.Tensor, aug_targets: torch.Tensor,
             mask: torch.Tensor, *, generator: torch.Generator | None = None, cfg: CCCConfig = CCCConfig(),
             perplexity: torch.Tensor | float | None = None, num_vars_total: int | None = None,
             features: torch.Tensor | None = None, neg_indices: tuple[torch.Tensor, torch.Tensor] | None = None,
             cluster_ids: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The ccc-wav2vec 2.0 objective: alpha*L_c + beta*L_cross + gamma*L_cross' + diversity + feature penalty.

    Inputs are (B, T, D) at every frame for both views (the augmented view was masked with the *same* (B, T) bool
    ``mask``, fork wav2vec2.py:724-735): ``context``/``aug_context`` are final-projected encoder outputs and
    ``targets``/``aug_targets`` projected quantized targets. As in the fork (wav2vec2.py:771-787, 865-871):

    - negatives are drawn independently for each view from its own masked targets;
    - ``contrastive`` (L_c, weight alpha): original context vs original targets and negatives;
    - ``cross_orig_to_aug`` (fork ``x_ya``/``xya_loss``, weight beta): original context vs augmented targets and the
      augmented view's negatives;
    - ``cross_aug_to_orig`` (fork ``xa_y``/``xay_loss``, weight gamma): augmented context vs original targets and the
      original view's negatives (the same ones L_c uses);
    - each view's negative logits in the positive's k-means cluster are scaled by ``cfg.scale_factor``
      (clustering is skipped when the factor is 1.0);
    - diversity and feature penalty come from the original view only (the fork computes ``aug_features_pen`` and
      the augmented perplexity but never uses them), so pass the original view's ``perplexity`` and ``features``
      (the conv encoder output before layer norm, or a 0-dim tensor holding its :func:`feature_penalty`).

    ``neg_indices`` = (original, augmented) (K, B, T) time indices and ``cluster_ids`` = (original, augmented) (B, T)
    ids override the random draw and the k-means (tests, replay, or a model that clusters itself).
    Every term is a mean over the masked frames. Returns ``(total, parts)`` with float parts for logging.
    """
    _check_views(context, targets, mask)
    if aug_context.shape != context.shape or aug_targets.shape != targets.shape:
        raise QuambaEdgeError("the augmented view must have the same shapes as the original (same length and mask)")
    idx, aug_idx = (None, None) if neg_indices is None else neg_indices
    idx = _negatives(idx, "neg_indices[0]", mask, cfg, generator)
    aug_idx = _negatives(aug_idx, "neg_indices[1]", mask, cfg, generator)
    weights = aug_weights = None
    if cfg.scale_factor != 1.0:
        if cluster_ids is None:
            cluster_ids = cluster_targets(targets.detach(), aug_targets.detach(), mask, cfg.cluster_factor,
                                          cfg.kmeans_iters, generator)
        ids, aug_ids = cluster_ids
        weights = cluster_negative_weights(ids, gather_negative_ids(ids, idx), cfg.scale_factor)
        aug_weights = cluster_negative_weights(aug_ids, gather_negative_ids(aug_ids, aug_idx), cfg.scale_factor)
    logits, lc = _masked_term(context, targets, idx, weights, mask, cfg.temperature)
    _, l_oa = _masked_term(context, aug_targets, aug_idx, aug_weights, mask, cfg.temperature)
    _, l_ao = _masked_term(aug_context, targets, idx, weights, mask, cfg.temperature)
    alpha, beta, gamma = cfg.cc_weights
    terms = {"contrastive": lc, "cross_orig_to_aug": l_oa, "cross_aug_to_orig": l_ao}
    total, parts = _total(cfg, logits, alpha * lc + beta * l_oa + gamma * l_ao, terms, perplexity, num_vars_total,
                          features)
    if weights is not None:
        parts["same_cluster_negatives"] = float((weights[:, mask] != 1.0).float().mean())
    return total, parts


# Augmentation ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    """The fork's augmentation chain (fairseq/data/audio/raw_audio_dataset.py:356-363), each step applied
    independently per utterance with its probability, in this order:

    1. white Gaussian noise, p=0.6. The fork's ``Noise(min_snr=0.001, max_snr=0.7)`` draws the noise *std* as
       U[0.001, 0.7] x signal std (torchaudio-augmentations noise.py:17-18), i.e. a noise-to-signal amplitude ratio,
       an SNR of 3.1..60 dB; ``noise_ratio_range`` keeps those semantics.
    2. reverberation, p=0.7. The fork uses libsox ``reverb`` (WavAugment) with reverberance, damping and room size
       each U{0..99}. Sox is not used here: this is an **approximation** with a synthetic exponentially decaying
       noise impulse response whose RT60 is drawn from ``reverb_rt60_range`` and a wet/dry mix from
       ``reverb_wet_range``; loudness is restored to the input RMS.
    3. background noise, p=0.8. The fork mixes a random MUSAN "free-sound" clip at ``randint(0, 15)`` "dB" but
       computes the gain as ``exp(snr_db/10)`` on L2 norms and halves the sum (add_background_noise.py:37-43), so its
       real SNR is 0..13 dB and the level drops. Here the SNR in dB is exact, U[``background_snr_db_range``], and
       the signal level is kept. Pass real noise clips as ``noise_bank``; without one, synthetic pink noise stands in.
    4. speed perturbation, **off** (p=0): the fork's library has ``RandomSpeedChange`` (0.9/1.0/1.1) but the
       dataset does not use it, and it would break the frame alignment that lets both views share one mask. If
       enabled, the waveform is resampled (linear interpolation) and cropped/zero-padded back to the input length.
    No pitch shift: the fork does not use one.
    """

    sample_rate: int = SAMPLE_RATE
    noise_p: float = 0.6
    noise_ratio_range: tuple[float, float] = (0.001, 0.7)
    reverb_p: float = 0.7
    reverb_rt60_range: tuple[float, float] = (0.1, 0.8)
    reverb_wet_range: tuple[float, float] = (0.2, 0.8)
    background_p: float = 0.8
    background_snr_db_range: tuple[float, float] = (0.0, 15.0)
    speed_p: float = 0.0
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)


def add_noise_at_snr(wave: torch.Tensor, snr_db: float | torch.Tensor, generator: torch.Generator | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
    """Add ``noise`` (white Gaussian if None) to a 1-D ``wave`` scaled so that 10*log10(P_signal/P_noise) = snr_db.

    The scale uses the realised noise power, so the SNR is exact rather than only in expectation. A silent signal or
    silent noise is returned unchanged (there is no level to set).
    """
    if wave.dim() != 1:
        raise QuambaEdgeError(f"add_noise_at_snr works on one waveform (S,), got shape {tuple(wave.shape)}")
    if noise is None:
        noise = _rand(torch.randn, tuple(wave.shape), generator, wave.device)
    if noise.shape != wave.shape:
        raise QuambaEdgeError(f"noise {tuple(noise.shape)} must match the waveform {tuple(wave.shape)}")
    p_sig, p_noise = (v.double().pow(2).mean() for v in (wave, noise))
    if p_sig <= 0 or p_noise <= 0:
        return wave.clone()
    gain = torch.sqrt(p_sig / (p_noise * 10.0 ** (float(snr_db) / 10.0)))
    return (wave.double() + gain * noise.double()).to(wave.dtype)


def _reverb(wave: torch.Tensor, rt60: float, wet: float, sample_rate: int, generator: torch.Generator | None):
    n = wave.shape[0]
    length = max(2, int(rt60 * sample_rate))
    t = torch.arange(length, device=wave.device, dtype=torch.float32)
    decay = torch.exp(-math.log(1000.0) * t / (rt60 * sample_rate))
    tail = _rand(torch.randn, (length,), generator, wave.device) * decay
    tail[0] = 0.0
    tail = tail / tail.norm().clamp_min(1e-12)
    size = n + length - 1
    wet_sig = torch.fft.irfft(torch.fft.rfft(wave.float(), size) * torch.fft.rfft(tail, size), size)[:n]
    out = (1.0 - wet) * wave.float() + wet * wet_sig
    rms_in, rms_out = wave.float().pow(2).mean().sqrt(), out.pow(2).mean().sqrt()
    if rms_out > 0:
        out = out * (rms_in / rms_out)
    return out.to(wave.dtype)


def augment(wave: torch.Tensor, generator: torch.Generator | None = None, cfg: AugmentConfig = AugmentConfig(),
            noise_bank: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Make the augmented view of a batch of 16 kHz waveforms (B, S) -> (B, S), same length, same alignment.

    See :class:`AugmentConfig` for the chain and how it differs from the fork. Every random choice comes from
    ``generator``, so a seeded generator gives the same output. ``lengths`` (B,) marks padding, which stays zero and
    is excluded from the level/SNR computations; ``noise_bank`` (M, S_n) holds background-noise clips (a random clip
    is picked per utterance, randomly cropped, or zero-padded when short, as the fork does).
    """
    if wave.dim() != 2 or not wave.is_floating_point():
        raise QuambaEdgeError(f"augment expects float waveforms (B, S), got {wave.dtype} {tuple(wave.shape)}")
    if noise_bank is not None and (noise_bank.dim() != 2 or noise_bank.shape[0] == 0):
        raise QuambaEdgeError(f"noise_bank must be (M, S_n) with M >= 1, got shape {tuple(noise_bank.shape)}")
    (batch, size), device = wave.shape, wave.device
    lens = [size] * batch if lengths is None else [int(v) for v in lengths.tolist()]
    if lengths is not None and (len(lens) != batch or min(lens) < 0 or max(lens) > size):
        raise QuambaEdgeError(f"lengths must be (B,) within [0, {size}], got {lens}")
    def lerp(bounds: tuple[float, float], v: float) -> float:
        return bounds[0] + (bounds[1] - bounds[0]) * v

    out = wave.clone()
    for b, n in enumerate(lens):
        if n < 2:
            continue
        x = wave[b, :n]
        # Draw every number up front, in a fixed order, so one step's skip does not shift later draws.
        u = _rand(torch.rand, (10,), generator, torch.device("cpu")).tolist()
        if u[0] < cfg.noise_p:
            x = add_noise_at_snr(x, -20.0 * math.log10(lerp(cfg.noise_ratio_range, u[1])), generator)
        if u[2] < cfg.reverb_p:
            rt60, wet = lerp(cfg.reverb_rt60_range, u[3]), lerp(cfg.reverb_wet_range, u[4])
            x = _reverb(x, rt60, wet, cfg.sample_rate, generator)
        if u[5] < cfg.background_p:
            snr_db = lerp(cfg.background_snr_db_range, u[6])
            if noise_bank is None:  # pink (1/f) noise, white noise shaped in the frequency domain, stands in
                spec = torch.fft.rfft(_rand(torch.randn, (n,), generator, device))
                freqs = torch.arange(spec.shape[0], device=device, dtype=torch.float32)
                bg = torch.fft.irfft(spec / freqs.clamp_min(1.0).sqrt(), n=n)
            else:
                clip = noise_bank[min(int(u[7] * noise_bank.shape[0]), noise_bank.shape[0] - 1)].to(device)
                if clip.shape[0] >= n:
                    start = min(int(u[8] * (clip.shape[0] - n + 1)), clip.shape[0] - n)
                    bg = clip[start : start + n]
                else:
                    bg = torch.cat([clip, clip.new_zeros(n - clip.shape[0])])
            x = add_noise_at_snr(x, snr_db, generator, noise=bg.to(x.dtype))
        if u[9] < cfg.speed_p:  # resample (linear interpolation), then crop or zero-pad back to n
            pick = _rand(torch.rand, (1,), generator, torch.device("cpu")).item()
            factor = cfg.speed_factors[min(int(pick * len(cfg.speed_factors)), len(cfg.speed_factors) - 1)]
            if factor != 1.0:
                new_len = max(2, round(n / factor))
                y = F.interpolate(x.float()[None, None], size=new_len, mode="linear", align_corners=False)[0, 0]
                x = (y[:n] if new_len >= n else torch.cat([y, y.new_zeros(n - new_len)])).to(x.dtype)
        out[b, :n] = x
    return out
