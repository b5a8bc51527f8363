"""The shared model helpers: text encoding (models/text.py), seeded sampling (models/sampling.py)
and the local-or-hub resolver (models/hub.py)."""

import copy

import pytest
import torch

from evallearn.models import hub, sampling, text
from evallearn.models.tokenizer import load_clip_tokenizer


def test_tokenize_pads_real_clip_ids_to_77():
    tok = load_clip_tokenizer()
    batch = text.tokenize(tok, ["a photo of a cat", "a dog"])
    ids = batch.input_ids
    assert ids.shape == (2, 77)
    # SD's tokenizer: BOS, the words, EOS, then the pad token (CLIP's is <|endoftext|>) to 77
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].tolist() == [tok.pad_token_id] * 70
    assert batch.attention_mask[0].sum().item() == 7
    # a single string is one row; a shorter max_length truncates to BOS .. EOS
    assert text.tokenize(tok, "a photo of a cat", max_length=4).input_ids.tolist() == [[49406, 320, 1125, 49407]]


def test_token_ids_lands_on_the_text_encoder_device(pipe):
    ids = text.token_ids(pipe, ("a cat",))
    assert ids.shape == (1, pipe.tokenizer.model_max_length) and ids.device == pipe.text_encoder.device


def test_injected_token_embeddings_equal_an_encoder_with_that_embedding_table(pipe):
    te = pipe.text_encoder
    ids = text.token_ids(pipe, ["a cat", "a photo of a dog"])
    table = te.get_input_embeddings().weight.detach()
    new_table = table * 1.5 + 0.25
    embeds = new_table[ids].clone().requires_grad_(True)
    out = text.encode(te, ids, embeds)
    # independent computation: a copy of the encoder whose lookup table IS new_table
    other = copy.deepcopy(te)
    other.get_input_embeddings().weight.data.copy_(new_table)
    with torch.no_grad():
        want = other(ids)
    torch.testing.assert_close(out[0], want[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], want[1], rtol=0, atol=1e-6)
    out[0].sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    # the hook is gone afterwards: the plain encoder is unchanged
    with torch.no_grad():
        assert not torch.allclose(te(ids)[0], want[0])
        torch.testing.assert_close(text.encode(te, ids)[0], te(ids)[0], rtol=0, atol=0)


def test_seeded_initial_latents_equal_diffusers_draw(pipe):
    from diffusers.utils.torch_utils import randn_tensor

    seeds = [0, 7, 123]
    got = sampling.initial_latents(pipe, seeds, 64, 64)
    c, f = pipe.unet.config.in_channels, pipe.vae_scale_factor
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    want = randn_tensor((3, c, 64 // f, 64 // f), generator=gens, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(got, want.to(got), rtol=0, atol=0)
    # hand value: torch.manual_seed(0); torch.randn(4, 4)[0, 0] (the vectorised path, 16+ values)
    assert got[0].flatten()[0].item() == pytest.approx(-1.1258, abs=1e-4)
    assert [g.initial_seed() for g in sampling.seed_generators([3, 4], offset=1)] == [4, 5]


def test_vae_encode_mean_and_seeded_sample(pipe):
    vae = pipe.vae
    px = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    with torch.no_grad():
        dist = vae.encode(px).latent_dist
    sf = vae.config.scaling_factor
    torch.testing.assert_close(sampling.vae_encode(vae, px, sample=False), dist.mean * sf, rtol=0, atol=0)
    eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(5))
    got = sampling.vae_encode(vae, px, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, (dist.mean + dist.std * eps) * sf, rtol=0, atol=0)


def test_hub_refs(tmp_path):
    assert hub.is_local("a/b/c") and hub.is_local("folder") and hub.is_local(str(tmp_path))
    assert not hub.is_local("someone/not-here")
    assert hub.cached_snapshot("someone/not-cached-anywhere") is None  # offline: never downloads
