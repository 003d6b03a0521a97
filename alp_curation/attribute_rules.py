"""A faster ``match`` for spaCy's attribute_ruler, with the same matches.

In ``en_core_web_sm`` the attribute_ruler maps each fine-grained tag to its POS and morphology
and fixes a few words (179 rules). Its cost is spaCy's general token Matcher, run over every
token against every rule: about 28 µs a token, close to half of tagging a caption
(`benchmarks/bench_tagging.py`), while setting the attributes matched costs little.

The rules of such a ruler only test, token by token, a handful of token attributes (the lower
case form, the tag, the dependency label, whether the token is a space) for equality, ``IN``,
``NOT_IN`` or ``REGEX``, with no quantifiers. Which rules match at a position then depends only
on the attributes of the tokens a rule spans, so `CompiledRules` computes a token's attribute
tuple once, looks the rules that match a tuple (or a run of tuples, for rules of two tokens) up
in a cache, and tests the rules only for a tuple it has not seen. The matches are those of
spaCy's Matcher, as ``AttributeRuler.match`` returns them (sorted by rule, then span), so
``AttributeRuler.set_annotations`` sets the same attributes in the same order.

A ruler with a rule outside that language (another attribute, another operator, a quantifier)
keeps spaCy's Matcher (`compile_rules` returns None).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MAX_CACHED", "CompiledRules", "compile_rules", "speed_up_attribute_ruler"]

# The token attributes a compiled rule may test, as the Matcher reads them.
ATTRIBUTES: dict[str, Callable[[Any], Any]] = {
    "LOWER": lambda t: t.lower_,
    "TAG": lambda t: t.tag_,
    "DEP": lambda t: t.dep_,
    "IS_SPACE": lambda t: t.is_space,
}
NAMES = tuple(ATTRIBUTES)
MAX_CACHED = 200_000  # attribute tuples (or runs of them) remembered per rule length

TokenTest = Callable[[tuple[Any, ...]], bool]  # on a token's attribute tuple (NAMES order)


def _value_test(position: int, value: Any) -> TokenTest | None:
    """The test of one attribute (at ``position`` in the tuple) against a pattern's value."""
    if isinstance(value, dict):
        if len(value) != 1:
            return None
        ((op, arg),) = value.items()
        if op in ("IN", "NOT_IN") and isinstance(arg, list):
            members = frozenset(arg)
            if op == "IN":
                return lambda sig: sig[position] in members
            return lambda sig: sig[position] not in members
        if op == "REGEX" and isinstance(arg, str):
            compiled = re.compile(arg)
            return lambda sig: (
                isinstance(sig[position], str) and bool(compiled.search(sig[position]))
            )
        return None
    if isinstance(value, str | bool):
        return lambda sig: sig[position] == value
    return None


def _token_test(spec: dict[str, Any]) -> TokenTest | None:
    """A token pattern as a test of its attribute tuple; None when it cannot be compiled."""
    tests = []
    for key, value in spec.items():
        name = key.upper()
        if name not in ATTRIBUTES:
            return None  # "OP", or an attribute not compiled
        test = _value_test(NAMES.index(name), value)
        if test is None:
            return None
        tests.append(test)
    return lambda sig: all(test(sig) for test in tests)


class CompiledRules:
    """``ruler.match`` without the Matcher, for a ruler `compile_rules` accepted.

    ``rules[n]``: for rules of ``n`` tokens, (rule number, one test per token) of each pattern.
    """

    def __init__(
        self,
        ruler: Any,
        rules: dict[int, list[tuple[int, Sequence[TokenTest]]]],
    ) -> None:
        self.ruler = ruler
        self.rules = rules
        strings = ruler.vocab.strings
        self.match_ids = [strings[str(i)] for i in range(len(ruler.attrs))]
        self.cache: dict[int, dict[tuple[Any, ...], tuple[int, ...]]] = {n: {} for n in rules}

    def _matching(self, n: int, run: tuple[tuple[Any, ...], ...]) -> tuple[int, ...]:
        cache = self.cache[n]
        found = cache.get(run)
        if found is None:
            found = tuple(
                sorted(
                    {
                        rule
                        for rule, tests in self.rules[n]
                        if all(test(sig) for test, sig in zip(tests, run, strict=True))
                    }
                )
            )
            if len(cache) >= MAX_CACHED:
                cache.clear()
            cache[run] = found
        return found

    def __call__(self, doc: Any) -> list[tuple[int, int, int, int]]:
        """(rule number, match id, start, end) of every match in ``doc``, sorted, as
        ``AttributeRuler.match`` returns them."""
        sigs = [tuple(read(t) for read in ATTRIBUTES.values()) for t in doc]
        matches = []
        for n in self.rules:
            for start in range(len(sigs) - n + 1):
                run = tuple(sigs[start : start + n])
                for rule in self._matching(n, run):
                    matches.append((rule, self.match_ids[rule], start, start + n))
        matches.sort()
        return matches


def compile_rules(ruler: Any) -> CompiledRules | None:
    """The compiled ``match`` of an AttributeRuler, or None when one of its rules is outside
    what `CompiledRules` does (module docstring)."""
    rules: dict[int, list[tuple[int, Sequence[TokenTest]]]] = {}
    for number, rule in enumerate(ruler.patterns):
        for pattern in rule["patterns"]:
            if not isinstance(pattern, list) or not pattern:
                return None  # a phrase pattern (a Doc or a string), or an empty one
            tests = [_token_test(spec) for spec in pattern]
            if any(test is None for test in tests):
                return None
            rules.setdefault(len(pattern), []).append((number, tests))  # type: ignore[arg-type]
    return CompiledRules(ruler, rules)


def speed_up_attribute_ruler(nlp: Any) -> bool:
    """Give ``nlp``'s attribute_ruler, if any, the compiled ``match``; True when it got it."""
    if "attribute_ruler" not in nlp.pipe_names:
        return False
    ruler = nlp.get_pipe("attribute_ruler")
    compiled = compile_rules(ruler)
    if compiled is None:
        return False
    ruler.match = compiled
    return True
