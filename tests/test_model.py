"""GareModel: text and video encoders, temporal module, input validation, similarity."""

import pytest
import torch
import torch.nn.functional as F

from gare.config import BackboneConfig, ModelConfig, TemporalConfig
from gare.model import GareModel
from gare.model.backbone import EOT_TOKEN, SOT_TOKEN

TEXTS = ["a man is cooking pasta in a kitchen", "a dog runs", "two people dance on a stage at night"]


def test_tokenize_layout(tiny_model):
    ids = tiny_model.tokenize(TEXTS)
    assert ids.shape == (3, 32) and ids.dtype == torch.long
    for row in ids:
        n = int((row != 0).sum())
        assert row[0] == SOT_TOKEN and row[n - 1] == EOT_TOKEN and row[n:].eq(0).all()
    assert int((ids[1] != 0).sum()) == 5  # <sot> a dog runs <eot>


def test_tokenize_memo_equals_open_clip(tiny_model, monkeypatch):
    """The memoized ids are open_clip's, also when truncated and when the memo is emptied for being full."""
    import open_clip

    import gare.model.backbone as bb

    ref = open_clip.tokenizer.SimpleTokenizer()
    long = "a red circle moves left then a blue square grows " * 6  # over 32 tokens: truncated
    texts = [*TEXTS, long, "a dog runs", "", "Ünïcode &amp; html"]
    backbone = tiny_model.backbone
    backbone._token_memo.clear()
    monkeypatch.setattr(bb, "TOKEN_MEMO_SIZE", 4)
    for L in (32, 6, 77):
        for _ in range(2):  # the second pass reads the memo
            torch.testing.assert_close(backbone.tokenize(texts, max_words=L) if L != 32 else
                                       backbone.tokenize(texts), ref(texts, context_length=L), atol=0, rtol=0)
    assert 0 < len(backbone._token_memo) <= 4
    trunc = backbone.tokenize([long])[0]
    assert trunc[-1] == EOT_TOKEN and (trunc != 0).all()


def test_encode_text_strings_equal_token_ids(tiny_model):
    with torch.no_grad():
        from_strings = tiny_model.encode_text(TEXTS)
        from_ids = tiny_model.encode_text(tiny_model.tokenize(TEXTS))
        single = tiny_model.encode_text(TEXTS[1])
    assert from_strings.shape == (3, 128)
    torch.testing.assert_close(from_strings, from_ids, atol=0, rtol=0)
    torch.testing.assert_close(single[0], from_strings[1], atol=1e-5, rtol=1e-5)
    assert (from_strings[0] - from_strings[1]).abs().max() > 1e-2  # different texts, different embeddings


def test_padding_length_does_not_change_eot_embedding(tiny_model):
    """Causal mask: the EOT output is the same for ids padded to 32 or to CLIP's 77."""
    ids32 = tiny_model.tokenize(TEXTS)
    ids77 = torch.zeros(3, 77, dtype=torch.long)
    ids77[:, :32] = ids32
    with torch.no_grad():
        t32 = tiny_model.encode_text(ids32)
        t77 = tiny_model.encode_text(ids77)
        ref = tiny_model.backbone.clip.encode_text(ids77)  # open_clip's own text tower at full context
    torch.testing.assert_close(t32, t77, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t77, ref, atol=1e-5, rtol=1e-5)
    # the embedding is unnormalized (the spec scores t_i + Delta_ij before normalizing)
    assert (t32.norm(dim=-1) - 1).abs().max() > 1e-2


def test_encode_text_return_words(tiny_model):
    ids = tiny_model.tokenize(TEXTS)
    with torch.no_grad():
        t, words, wmask = tiny_model.encode_text(ids, return_words=True)
    lengths = (ids != 0).sum(1)
    assert words.shape == (3, 32, 128) and wmask.shape == (3, 32)
    assert wmask.sum(1).tolist() == lengths.tolist()
    eot = lengths - 1
    torch.testing.assert_close(words[torch.arange(3), eot], t, atol=1e-6, rtol=0)


def test_encode_text_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match="integer tensor"):
        tiny_model.encode_text(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="integer tensor"):
        tiny_model.encode_text(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one text"):
        tiny_model.encode_text([])
    with pytest.raises(ValueError, match="context length 77"):
        tiny_model.encode_text(torch.ones(1, 78, dtype=torch.long))


def test_encode_frames_equals_clip_image_encoder(tiny_model, tiny_frames):
    with torch.no_grad():
        f = tiny_model.encode_frames(tiny_frames)
        ref = tiny_model.backbone.clip.encode_image(tiny_frames.reshape(-1, 3, 64, 64)).reshape(3, 4, -1)
    torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)


def test_encode_video_mask_padded_frames_do_not_matter(tiny_model, tiny_frames):
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        v = tiny_model.encode_video(tiny_frames, mask)
        other = tiny_frames.clone()
        other[~mask] = torch.randn(int((~mask).sum()), 3, 64, 64) * 5  # new content in padded slots
        v2 = tiny_model.encode_video(other, mask)
        for j, n in enumerate([4, 2, 1]):
            alone = tiny_model.encode_video(tiny_frames[j:j + 1, :n])  # the valid frames alone, no padding
            torch.testing.assert_close(v[j, :n], alone[0], atol=1e-5, rtol=1e-5)
        unmasked = tiny_model.encode_video(tiny_frames)
    torch.testing.assert_close(v[mask], v2[mask], atol=1e-6, rtol=0)
    # without the mask the padded frames do change the valid frames' outputs (seqTransf attends to them)
    assert (unmasked[1, :2] - v[1, :2]).abs().max() > 1e-4
    assert v.shape == (3, 4, 128)


def test_seqtransf_initialized_from_text_transformer(tiny_model):
    clip = tiny_model.backbone.clip
    temporal = tiny_model.temporal
    assert len(temporal.transformer.resblocks) == 3
    for i in range(3):
        src = clip.transformer.resblocks[i].state_dict()
        dst = temporal.transformer.resblocks[i].state_dict()
        assert src.keys() == dst.keys()
        for k in src:
            assert torch.equal(src[k], dst[k]), f"block {i} {k}"
        # a copy, not shared storage: training the temporal module must not change CLIP
        assert dst["attn.in_proj_weight"].data_ptr() != src["attn.in_proj_weight"].data_ptr()
    P = temporal.frame_position_embeddings.weight
    assert P.shape == (77, 128)
    assert torch.equal(P, clip.positional_embedding)


def test_seqtransf_extra_layers_keep_their_init():
    """4 temporal layers over a 3-layer text tower: blocks 0-2 copied, block 3 not."""
    torch.manual_seed(0)
    m = GareModel(ModelConfig(backbone=BackboneConfig(arch="tiny"), temporal=TemporalConfig(layers=4)))
    src = m.backbone.clip.transformer.resblocks
    dst = m.temporal.transformer.resblocks
    assert torch.equal(dst[2].attn.in_proj_weight, src[2].attn.in_proj_weight)
    assert not torch.equal(dst[3].attn.in_proj_weight, src[2].attn.in_proj_weight)


def test_seqtransf_formula(tiny_model, tiny_frames):
    """f' = f + Transformer(f + P[:F]) with the padded keys masked."""
    with torch.no_grad():
        f = tiny_model.encode_frames(tiny_frames)
        out = tiny_model.temporal_forward(f)
        tr = tiny_model.temporal.transformer
        expected = f + tr(f + tiny_model.temporal.frame_position_embeddings.weight[:4])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert (out - f).abs().max() > 1e-3


def test_meanp_returns_frames_unchanged(tiny_frames):
    torch.manual_seed(0)
    m = GareModel(ModelConfig(backbone=BackboneConfig(arch="tiny"), temporal=TemporalConfig(kind="meanP"))).eval()
    assert m.temporal is None
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        v = m.encode_video(tiny_frames, mask)
        f = m.encode_frames(tiny_frames, mask)
        ref = m.backbone.clip.encode_image(tiny_frames.reshape(-1, 3, 64, 64)).reshape(3, 4, -1)
    torch.testing.assert_close(v, f, atol=0, rtol=0)
    torch.testing.assert_close(v[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert v[~mask].abs().max() == 0  # padded frames are not encoded


def test_encode_video_bad_inputs(tiny_model, tiny_frames):
    with pytest.raises(ValueError, match=r"\[N, F, 3, H, W\]"):
        tiny_model.encode_video(tiny_frames[:, 0])  # one frame per video without the F axis
    with pytest.raises(ValueError, match=r"\[N, F, 3, H, W\]"):
        tiny_model.encode_video(tiny_frames[:, :, :1])  # grey frames
    with pytest.raises(ValueError, match="64x64 pixels"):
        tiny_model.encode_video(tiny_frames[..., :32, :32])
    with pytest.raises(ValueError, match=r"mask must be \[N, F\] = \(3, 4\), got \(3, 3\)"):
        tiny_model.encode_video(tiny_frames, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be \[N, F\]"):
        tiny_model.encode_video(tiny_frames, torch.ones(12, dtype=torch.bool))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False
    with pytest.raises(ValueError, match=r"videos \[2\] have no valid frame"):
        tiny_model.encode_video(tiny_frames, mask)


def test_similarity_bad_inputs(tiny_model):
    t = torch.randn(2, 128)
    v = torch.randn(3, 4, 128)
    with pytest.raises(ValueError, match="expected text"):
        tiny_model.similarity(t[:, :64], v)
    with pytest.raises(ValueError, match="expected text"):
        tiny_model.similarity(t, v[:, 0])
    with pytest.raises(ValueError, match=r"video mask must be \[N_v, F\]"):
        tiny_model.similarity(t, v, torch.ones(3, 5))
    with pytest.raises(ValueError, match="no valid frame"):
        tiny_model.similarity(t, v, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]))


def test_similarity_end_to_end_matches_reference(tiny_model, tiny_frames):
    """model.similarity (whatever path it takes) equals the reference scorer and the formula with Delta."""
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        t = tiny_model.encode_text(TEXTS)
        v = tiny_model.encode_video(tiny_frames, mask)
        out = tiny_model.score_pairs(t, v, mask)
    S = tiny_model.similarity(t, v, mask)
    assert S.shape == (3, 3)
    torch.testing.assert_close(S, out.sim, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny_model.similarity(t, v, mask, fast=False), out.sim, atol=1e-6, rtol=0)
    vhat = tiny_model.scorer.pool(t, v, mask)
    expected = F.cosine_similarity(t[:, None] + out.delta, vhat, dim=-1)
    torch.testing.assert_close(out.sim, expected, atol=1e-6, rtol=0)
    assert out.delta.abs().max() > 1e-4  # Delta is really applied


def test_similarity_restores_training_mode(tiny_model, tiny_frames):
    m = tiny_model.train()
    with torch.no_grad():
        t = m.encode_text(TEXTS[:2])
        v = m.encode_video(tiny_frames)
    S1 = m.similarity(t, v)
    S2 = m.similarity(t, v)
    assert m.training
    torch.testing.assert_close(S1, S2, atol=0, rtol=0)  # eval mode inside: dropout off, deterministic


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unknown CLIP architecture 'ViT-Q-99'"):
        GareModel(ModelConfig(backbone=BackboneConfig(arch="ViT-Q-99")))
