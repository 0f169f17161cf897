"""Report attributes: configuration, extractors, and AlignedFusion's attribute tokens.

AlignedFusion (METHODS.md section 3) reads a report as a fixed table of attributes, each one
positive (+1), negative (0) or unmentioned (-1). The paper fills the table with GPT-3.5; here an
:class:`AttributeExtractor` does it, a rule-based one by default, and any other (an LLM or NER
model) can be registered by name in :data:`EXTRACTORS`.

Eq.5: the token of attribute a is the text encoder's [CLS] of the prompt ``"<name>: present"``
(state +1) or ``"<name>: absent"`` (state 0); an unmentioned attribute has no token (zero vector,
``token_mask`` False) and the model puts its learned UN token there. Prompts take only 2*A
distinct values, so each is encoded once and the per-sample tokens are gathered from that table.

Configuration (YAML or JSON; see ``trainables/resources/synth_clinic_attributes.yaml``)::

    attributes:
      - name: irregular border                   # used in prompts
        synonyms: [irregular margin, ...]        # other phrasings the reports use
        values: {positive: [present, noted], negative: [absent, not seen]}
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from trainables.data.errors import DataError

POSITIVE, NEGATIVE, UNMENTIONED = 1, 0, -1
PROMPT_VALUES: tuple[str, str] = ("present", "absent")
"""Prompt value words of Eq.5: index 0 for state +1, index 1 for state 0."""

DEFAULT_CONFIG = "synth_clinic_attributes.yaml"


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Attribute:
    name: str
    synonyms: tuple[str, ...] = ()
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()

    @property
    def terms(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)

    def prompts(self) -> tuple[str, str]:
        return tuple(f"{self.name}: {v}" for v in PROMPT_VALUES)  # type: ignore[return-value]


@dataclass(frozen=True)
class AttributeConfig:
    attributes: tuple[Attribute, ...]
    source: str = "<inline>"

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def __len__(self) -> int:
        return len(self.attributes)

    def to_dict(self) -> dict[str, Any]:
        return {"attributes": [
            {"name": a.name, "synonyms": list(a.synonyms), "values": {"positive": list(a.positive), "negative": list(a.negative)}}
            for a in self.attributes
        ]}

    def digest(self) -> str:
        """SHA-256 of the configuration's content (not of its file name or formatting)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def prompts(self) -> list[str]:
        """The 2*A prompts, ``[a0 present, a0 absent, a1 present, ...]``."""
        return [p for a in self.attributes for p in a.prompts()]

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<inline>") -> AttributeConfig:
        entries = raw.get("attributes") if isinstance(raw, dict) else raw
        if not isinstance(entries, list) or not entries:
            raise DataError(source, "expected a non-empty list under 'attributes'")
        attrs: list[Attribute] = []
        for i, e in enumerate(entries):
            where = f"{source}: attributes[{i}]"
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"].strip():
                raise DataError(where, "expected a mapping with a non-empty string 'name'")
            unknown = set(e) - {"name", "synonyms", "values"}
            if unknown:
                raise DataError(where, f"unknown field(s) {sorted(unknown)}; expected name, synonyms, values")
            values = e.get("values") or {}
            if not isinstance(values, dict) or set(values) - {"positive", "negative"}:
                raise DataError(f"{where}.values", "expected a mapping with keys 'positive' and/or 'negative'")
            attrs.append(Attribute(
                name=e["name"].strip(),
                synonyms=_str_list(e.get("synonyms"), f"{where}.synonyms"),
                positive=_str_list(values.get("positive"), f"{where}.values.positive"),
                negative=_str_list(values.get("negative"), f"{where}.values.negative"),
            ))
        names = [_normalise(a.name) for a in attrs]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise DataError(source, f"attribute {dup!r} is listed twice")
        owners: dict[str, str] = {}
        for a in attrs:
            for t in a.terms:
                key = _normalise(t)
                if owners.setdefault(key, a.name) != a.name:
                    raise DataError(source, f"term {t!r} names both {owners[key]!r} and {a.name!r}")
        return cls(tuple(attrs), source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> AttributeConfig:
        """Read a YAML/JSON configuration; ``None`` gives the packaged synth-clinic vocabulary."""
        if path is None:
            text = resources.files("trainables.resources").joinpath(DEFAULT_CONFIG).read_text()
            return cls.from_dict(_parse(text, DEFAULT_CONFIG, yaml=True), DEFAULT_CONFIG)
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(str(path), "attribute configuration file not found")
        return cls.from_dict(_parse(p.read_text(), str(p), yaml=p.suffix.lower() in (".yaml", ".yml")), str(p))


def _parse(text: str, where: str, *, yaml: bool) -> Any:
    import yaml as _yaml

    try:
        return _yaml.safe_load(text) if yaml else json.loads(text)
    except (_yaml.YAMLError, json.JSONDecodeError) as err:
        raise DataError(where, f"cannot parse: {str(err).splitlines()[0]}") from None


def _str_list(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
        raise DataError(where, "expected a list of non-empty strings")
    return tuple(s.strip() for s in v)


# ---------------------------------------------------------------------- extractor interface
class AttributeExtractor(ABC):
    """Turns report texts into the attribute state table. Subclass it and register it with
    :func:`register_extractor` to plug an LLM or NER model into ``encode_dataset(extractor=...)``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    """Bump when the extractor's output for the same input changes (it is part of the cache key)."""

    def __init__(self, config: AttributeConfig) -> None:
        self.config = config

    @abstractmethod
    def extract(self, texts: Sequence[str]) -> np.ndarray:
        """int8 [N, A] in attribute order: 1 positive, 0 negative, -1 unmentioned."""

    def identity(self) -> dict[str, Any]:
        return {"extractor": self.name, "version": self.version, "attributes": self.config.digest()}


ExtractorFactory = Callable[[AttributeConfig], AttributeExtractor]
EXTRACTORS: dict[str, ExtractorFactory] = {}


def register_extractor(name: str) -> Callable[[type[AttributeExtractor]], type[AttributeExtractor]]:
    def deco(cls: type[AttributeExtractor]) -> type[AttributeExtractor]:
        cls.name = name
        EXTRACTORS[name] = cls
        return cls

    return deco


def get_extractor(name: str, config: AttributeConfig) -> AttributeExtractor:
    if name not in EXTRACTORS:
        raise DataError(f"extractor {name!r}", f"unknown attribute extractor; known: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name](config)


# ---------------------------------------------------------------------- rule-based extractor
_WORD = re.compile(r"[a-z0-9]+|[.;!?,]")


def _words(text: str) -> list[str]:
    """Lower-case words and clause punctuation; hyphens split words ("blue-white" -> blue, white)."""
    return _WORD.findall(text.lower())


def _normalise(text: str) -> str:
    return " ".join(_words(text))


# cue classes
_PRE_NEG = ("no", "not", "without", "negative for", "absence of", "free of", "no evidence of", "no sign of",
            "no signs of", "lack of", "lacks", "lacking", "neither", "denies", "rules out", "ruling out")
_PRE_POS = ("with", "positive for", "presence of", "shows", "showing", "demonstrates", "demonstrating",
            "displays", "exhibits", "has", "reveals")
_POST_NEG = ("absent", "not seen", "not present", "not identified", "not observed", "not noted", "not detected",
             "not visible", "not appreciated", "ruled out", "excluded", "negative", "not")
_POST_POS = ("present", "noted", "seen", "observed", "identified", "detected", "visible", "positive", "appreciated")
_BOUNDARY = (".", ";", "!", "?", "but", "however", "although", "though", "whereas", "while", "except", "yet")
_CONNECTOR = (",", "and", "or", "nor", "as well as", "&")


@dataclass
class _Item:
    kind: str              # "mention" | "pre" | "value" | "boundary" | "connector" | "word"
    text: str
    attr: int = -1         # attribute index for mentions
    polarity: int = -1     # POSITIVE / NEGATIVE for pre cues


@register_extractor("rules")
class RuleBasedExtractor(AttributeExtractor):
    """Deterministic NegEx-style extractor.

    A report is cut into words; attribute names/synonyms (longest match first), cue phrases and
    clause boundaries (``. ; but however ...``) are tagged. For each mention of an attribute,
    within its clause:

    1. a value word right after it (before the next mention) decides: ``present``/``noted``/...
       -> +1, ``absent``/``not seen``/... -> 0 (plus the attribute's configured value words);
    2. otherwise the nearest cue before it: ``no``/``without``/``negative for``/... -> 0,
       ``with``/``positive for``/... -> +1; the search passes over coordinated mentions
       ("no ulceration, streaks or veil") and stops at a value word or the clause start;
    3. otherwise, if it is coordinated (only ``, and or nor`` between them) with a following
       mention that has a value word, it shares it ("ulceration and streaks are absent");
    4. otherwise a bare mention means present (+1).

    An attribute mentioned several times takes the state of its last mention (documented choice:
    reports usually end with the conclusion). Unmentioned attributes are -1.
    """

    version = "1"

    def __init__(self, config: AttributeConfig) -> None:
        super().__init__(config)
        self._terms: dict[tuple[str, ...], int] = {}
        self._values: list[dict[str, int]] = []
        global_values = {**{w: POSITIVE for w in _POST_POS}, **{w: NEGATIVE for w in _POST_NEG}}
        for i, a in enumerate(config.attributes):
            for t in a.terms:
                self._terms[tuple(_words(t))] = i
            values = dict(global_values)
            values.update({_normalise(w): POSITIVE for w in a.positive})
            values.update({_normalise(w): NEGATIVE for w in a.negative})
            self._values.append(values)
        cues: dict[tuple[str, ...], tuple[str, int]] = {}
        for w in {w for v in self._values for w in v}:
            cues[tuple(_words(w))] = ("value", -1)
        for w in _PRE_NEG:
            cues.setdefault(tuple(_words(w)), ("pre", NEGATIVE))
        for w in _PRE_POS:
            cues.setdefault(tuple(_words(w)), ("pre", POSITIVE))
        for w in _BOUNDARY:
            cues[tuple(_words(w))] = ("boundary", -1)
        for w in _CONNECTOR:
            cues[tuple(_words(w))] = ("connector", -1)
        self._cues = cues
        self._max_len = max(len(k) for k in (*self._terms, *cues))

    def extract(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), len(self.config)), UNMENTIONED, dtype=np.int8)
        for n, text in enumerate(texts):
            for attr, state in self.extract_one(str(text)):
                out[n, attr] = state
        return out

    def extract_one(self, text: str) -> list[tuple[int, int]]:
        """(attribute index, state) for every mention, in reading order."""
        items = self._tag(_words(text))
        result: list[tuple[int, int]] = []
        start = 0
        for end in [i for i, it in enumerate(items) if it.kind == "boundary"] + [len(items)]:
            clause = items[start:end]
            result.extend(self._resolve(clause))
            start = end + 1
        return result

    def _tag(self, words: list[str]) -> list[_Item]:
        """Greedy longest-match tagging; attribute terms take precedence over cue phrases."""
        items: list[_Item] = []
        i = 0
        while i < len(words):
            for length in range(min(self._max_len, len(words) - i), 0, -1):
                span = tuple(words[i:i + length])
                if span in self._terms:
                    items.append(_Item("mention", " ".join(span), attr=self._terms[span]))
                    break
                if span in self._cues:
                    kind, pol = self._cues[span]
                    items.append(_Item(kind, " ".join(span), polarity=pol))
                    break
            else:
                length = 1
                items.append(_Item("word", words[i]))
            i += length
        return items

    def _own_value(self, clause: list[_Item], j: int) -> int | None:
        for it in clause[j + 1:]:
            if it.kind == "mention":
                return None
            if it.kind == "value" and it.text in self._values[clause[j].attr]:  # another attribute's word is just a word
                return self._values[clause[j].attr][it.text]
        return None

    def _pre_cue(self, clause: list[_Item], j: int) -> int | None:
        for it in reversed(clause[:j]):
            if it.kind == "pre":
                return it.polarity
            if it.kind == "value":  # a value word closes the scope; a bare "not" negates forward too
                return NEGATIVE if it.text == "not" else None
        return None

    def _coordinated_value(self, clause: list[_Item], j: int) -> int | None:
        k = j + 1
        while k < len(clause):
            if clause[k].kind == "mention":
                own = self._own_value(clause, k)
                if own is not None:
                    # the shared value word is read with the earlier attribute's vocabulary
                    values = self._values[clause[k].attr]
                    word = next(it.text for it in clause[k + 1:] if it.kind == "value" and it.text in values)
                    return self._values[clause[j].attr].get(word, own)
                j = k
            elif clause[k].kind != "connector":
                return None
            k += 1
        return None

    def _resolve(self, clause: list[_Item]) -> list[tuple[int, int]]:
        out = []
        for j, it in enumerate(clause):
            if it.kind != "mention":
                continue
            for rule in (self._own_value, self._pre_cue, self._coordinated_value):
                state = rule(clause, j)
                if state is not None:
                    break
            else:
                state = POSITIVE
            out.append((it.attr, state))
        return out


# ---------------------------------------------------------------------- Eq.5 tokens
def attribute_tokens(states: np.ndarray, prompt_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq.5: per-sample attribute tokens from the per-prompt table (each prompt's sentence embedding).

    ``states`` int8 [N, A]; ``prompt_vectors`` [2*A, d] in :meth:`AttributeConfig.prompts` order.
    Returns tokens float32 [N, A, d] (zeros where unmentioned) and token_mask bool [N, A].
    """
    a = states.shape[1]
    table = np.asarray(prompt_vectors, dtype=np.float32).reshape(a, 2, -1)
    mentioned = states != UNMENTIONED
    which = np.where(states == POSITIVE, 0, 1)  # prompt index: 0 "present", 1 "absent"
    tokens = table[np.arange(a)[None, :], which]  # [N, A, d]
    tokens[~mentioned] = 0.0
    return tokens.astype(np.float32), mentioned

