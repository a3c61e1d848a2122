"""The pre-training loop (both objectives) and the KWS fine-tuning loop, a few steps each on audio the
tests make: the losses are finite and move, checkpoints load back, the frozen conv stack stays frozen."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from quamba_edge.checkpoints.wav2vec2 import load_pretrain_heads, load_wav2vec2
from quamba_edge.models.wav2vec2 import Wav2Vec2Config
from quamba_edge.train.kws import FinetuneConfig, conv_features, finetune, predict
from quamba_edge.train.pretrain import PretrainConfig, Pretrainer, crops, span_mask

SMALL = {**Wav2Vec2Config.tiny().to_dict(), "conv_dim": (32, 32, 32, 32), "hidden_size": 32, "num_layers": 2,
         "num_heads": 2, "ffn_dim": 64, "pos_conv_kernel": 8, "pos_conv_groups": 4, "num_codevectors_per_group": 16,
         "codevector_dim": 16, "final_dim": 16}


def clips(n: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(rng.integers(16000, 40000)))).astype(np.float32) for _ in range(n)]


def test_crops_have_no_padding_and_masks_have_negatives():
    batch, lengths = next(crops(clips(), 4, 32000, np.random.default_rng(0)))
    assert batch.shape[1] == int(lengths[0]) <= 32000 and bool((lengths == batch.shape[1]).all())
    mask = span_mask(4, 50, 0.65, 10, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 50) and bool((mask.sum(1) >= 2).all())


def test_both_objectives_train_and_the_checkpoint_loads(tmp_path):
    for objective in ("wav2vec2", "ccc"):
        cfg = PretrainConfig(objective=objective, steps=4, batch_size=3, crop_s=1.0, n_negatives=10, model=SMALL)
        trainer = Pretrainer(cfg)
        history = trainer.train(clips())
        assert len(history) == 4 and all(np.isfinite(r["total"]) for r in history)
        assert ("cross_orig_to_aug" in history[0]) == (objective == "ccc")
        trainer.save(tmp_path / objective)
        encoder, _ = load_wav2vec2(tmp_path / objective)
        quantizer, heads = load_pretrain_heads(tmp_path / objective)
        x = torch.from_numpy(clips(1, 3)[0][None, :16000])
        with torch.no_grad():
            assert torch.equal(encoder(x).hidden, trainer.encoder.eval()(x).hidden)
        assert torch.equal(quantizer.codevectors, trainer.quantizer.codevectors)
        assert torch.equal(heads.final_proj.weight, trainer.heads.final_proj.weight)


def test_finetune_keeps_the_conv_stack_frozen_and_learns():
    torch.manual_seed(0)
    from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder

    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
    conv_before = copy.deepcopy(encoder.feature_encoder.state_dict())
    layer_before = encoder.layers[0].fc1.weight.detach().clone()
    rng = np.random.default_rng(0)
    # two separable classes: a low and a high tone in noise
    t = np.arange(8000) / 16000
    audio = np.stack([np.sin(2 * np.pi * (200 if i % 2 else 2000) * t) + 0.1 * rng.standard_normal(8000)
                      for i in range(32)]).astype(np.float32)
    labels = torch.tensor([i % 2 for i in range(32)])
    feats = conv_features(encoder, audio)
    model = finetune(encoder, ("low", "high"), feats, labels, FinetuneConfig(pool="adapool", epochs=6, batch_size=8,
                                                                            lr=3e-3, encoder_lr=1e-3))
    for k, v in model.encoder.feature_encoder.state_dict().items():
        assert torch.equal(v, conv_before[k]), k
    assert not torch.equal(model.encoder.layers[0].fc1.weight, layer_before)
    assert (predict(model, audio) == labels.numpy()).mean() == 1.0
    assert (predict(model, audio, features=feats) == predict(model, audio)).all()


def test_frozen_encoder_protocol_trains_only_the_head():
    torch.manual_seed(1)
    from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder
    from quamba_edge.train.kws import encoder_states

    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
    before = copy.deepcopy(encoder.state_dict())
    t = np.arange(8000) / 16000
    rng = np.random.default_rng(1)
    audio = np.stack([np.sin(2 * np.pi * (200 if i % 2 else 2000) * t) + 0.1 * rng.standard_normal(8000)
                      for i in range(32)]).astype(np.float32)
    labels = torch.tensor([i % 2 for i in range(32)])
    states = encoder_states(encoder, conv_features(encoder, audio))
    model = finetune(encoder, ("low", "high"), states, labels, FinetuneConfig(pool="avg", epochs=8, batch_size=8,
                                                                             lr=3e-3, encoder_lr=0))
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert (predict(model, audio, states=states) == predict(model, audio)).all()
    assert (predict(model, audio) == labels.numpy()).mean() == 1.0


def test_end_to_end_finetune_trains_the_conv_stack_too():
    torch.manual_seed(2)
    from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder

    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
    conv_before = copy.deepcopy(encoder.feature_encoder.state_dict())
    t = np.arange(8000) / 16000
    rng = np.random.default_rng(2)
    audio = np.stack([np.sin(2 * np.pi * (200 if i % 2 else 2000) * t) + 0.1 * rng.standard_normal(8000)
                      for i in range(32)]).astype(np.float32)
    labels = torch.tensor([i % 2 for i in range(32)])
    cfg = FinetuneConfig(pool="max", epochs=6, batch_size=8, lr=3e-3, encoder_lr=1e-3, train_conv=True)
    model = finetune(encoder, ("low", "high"), torch.from_numpy(audio), labels, cfg)
    changed = [k for k, v in model.encoder.feature_encoder.state_dict().items() if not torch.equal(v, conv_before[k])]
    assert any("conv" in k and k.endswith("weight") for k in changed)
    assert (predict(model, audio) == labels.numpy()).mean() == 1.0
    with pytest.raises(ValueError, match="encoder_lr"):
        finetune(encoder, ("low", "high"), torch.from_numpy(audio), labels,
                 FinetuneConfig(encoder_lr=0, train_conv=True))


def test_span_mask_for_fine_tuning_may_mask_nothing_and_covers_about_prob():
    gen = torch.Generator().manual_seed(0)
    assert not span_mask(64, 50, 0.0, 5, gen, min_spans=0).any()
    mask = span_mask(2000, 50, 0.3, 5, gen, min_spans=0)
    # 0.3 * 50 / 5 = 3 spans of 5 frames; overlaps make the covered share a little below 0.3
    assert 0.2 < float(mask.float().mean()) < 0.3


def test_channel_mask_zeroes_projected_channels_in_every_frame():
    torch.manual_seed(4)
    from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder

    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL)).eval()
    conv = encoder.conv_features(torch.randn(3, 8000))
    hidden = encoder.cfg.hidden_size
    channels = torch.zeros(3, hidden, dtype=torch.bool)
    channels[1, : hidden // 4] = True
    with torch.no_grad():
        plain, masked = encoder.contextualize(conv).hidden, encoder.contextualize(conv, channel_mask=channels).hidden
    assert torch.equal(plain[[0, 2]], masked[[0, 2]]) and not torch.allclose(plain[1], masked[1])
    with pytest.raises(ValueError, match="channel_mask"):
        encoder.contextualize(conv, channel_mask=channels[:, :4])


def test_end_to_end_finetune_with_time_and_channel_masking_learns_and_trains_mask_emb():
    torch.manual_seed(3)
    from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder

    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
    mask_emb = encoder.mask_emb.detach().clone()
    t = np.arange(8000) / 16000
    rng = np.random.default_rng(3)
    audio = np.stack([np.sin(2 * np.pi * (200 if i % 2 else 2000) * t) + 0.1 * rng.standard_normal(8000)
                      for i in range(32)]).astype(np.float32)
    labels = torch.tensor([i % 2 for i in range(32)])
    cfg = FinetuneConfig(pool="adapool", epochs=6, batch_size=8, lr=3e-3, encoder_lr=1e-3, train_conv=True,
                         mask_time_prob=0.3, mask_channel_prob=0.3)
    model = finetune(encoder, ("low", "high"), torch.from_numpy(audio), labels, cfg)
    assert not torch.equal(model.encoder.mask_emb, mask_emb)  # masked frames reached the loss
    assert (predict(model, audio) == labels.numpy()).mean() == 1.0  # inference runs unmasked
    with pytest.raises(ValueError, match="masking"):
        FinetuneConfig(mask_time_prob=1.5)


@pytest.mark.parametrize("train_conv", [True, False], ids=["end-to-end", "fine-tune"])
def test_masked_training_with_no_span_drawn_equals_unmasked_training(train_conv):
    """A mask probability so small that no span is drawn must train exactly as no masking does: the masked path
    computes what the plain one does, and its generator leaves the data order and dropout streams alone."""
    from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder

    t = np.arange(8000) / 16000
    rng = np.random.default_rng(5)
    audio = np.stack([np.sin(2 * np.pi * (200 if i % 2 else 2000) * t) + 0.1 * rng.standard_normal(8000)
                      for i in range(16)]).astype(np.float32)
    labels = torch.tensor([i % 2 for i in range(16)])
    weights = []
    for prob in (0.0, 1e-9):
        torch.manual_seed(5)
        encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
        x = torch.from_numpy(audio) if train_conv else conv_features(encoder, audio)
        cfg = FinetuneConfig(pool="avg", epochs=2, batch_size=8, lr=3e-3, encoder_lr=1e-3, train_conv=train_conv,
                             mask_time_prob=prob, mask_channel_prob=prob)
        assert cfg.masking == (prob > 0)
        weights.append(finetune(encoder, ("low", "high"), x, labels, cfg).state_dict())
    # mask_emb alone may differ: in the masked run it gets a zero gradient, so AdamW's weight decay moves it;
    # without masking it gets none and the optimizer skips it. Every weight that computes a logit must agree.
    assert weights[0].keys() == weights[1].keys()
    for k, v in weights[0].items():
        assert k == "encoder.mask_emb" or torch.equal(v, weights[1][k]), k


def test_fine_tune_protocol_with_masking_learns_and_frozen_refuses_masking():
    torch.manual_seed(6)
    from quamba_edge.models.wav2vec2 import Wav2Vec2Encoder

    encoder = Wav2Vec2Encoder(Wav2Vec2Config.from_dict(SMALL))
    t = np.arange(8000) / 16000
    rng = np.random.default_rng(6)
    audio = np.stack([np.sin(2 * np.pi * (200 if i % 2 else 2000) * t) + 0.1 * rng.standard_normal(8000)
                      for i in range(32)]).astype(np.float32)
    labels = torch.tensor([i % 2 for i in range(32)])
    feats = conv_features(encoder, audio)
    mask_emb = encoder.mask_emb.detach().clone()
    cfg = FinetuneConfig(pool="adapool", epochs=6, batch_size=8, lr=3e-3, encoder_lr=1e-3, mask_time_prob=0.3,
                         mask_channel_prob=0.3)
    model = finetune(encoder, ("low", "high"), feats, labels, cfg)
    assert not torch.equal(model.encoder.mask_emb, mask_emb)
    assert (predict(model, audio) == labels.numpy()).mean() == 1.0
    with pytest.raises(ValueError, match="masking needs a trained encoder"):
        finetune(encoder, ("low", "high"), feats, labels, FinetuneConfig(encoder_lr=0, mask_time_prob=0.2))
