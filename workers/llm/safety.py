"""Safety at the LLM edge: redact personal data, fence user text, distrust output.

* :func:`redact` (from :mod:`workers.llm.pii`) replaces personal data with
  typed placeholders before any text leaves the process (OWASP LLM02).
* :func:`fence` turns user- and catalog-supplied data into one JSON block
  inside ``<data>`` tags, with ``<``, ``>`` and ``&`` escaped so the data can
  never close the fence; instructions only ever live in the system message
  and say that fenced content is data, not instructions (OWASP LLM01).
* :func:`clean_text` treats model output as untrusted (OWASP LLM05). It
  checks the *normalised* text (:mod:`workers.llm.normalize`: entities
  decoded, NFKC, zero-width and C0/C1 controls dropped) and refuses active
  markup, links in any form (schemes, ``www.``, bare domains, IP addresses,
  defanged ``hxxp``/``[.]``) and personal data; other tags are stripped and
  the length is capped. What it returns is the normalised text.
* :class:`LeakGuard` refuses output that carries the canary token (plain,
  look-alike letters, entities, reversed, spaced, base64/32, hex, rot13), a
  verbatim run of :data:`SHINGLE_WORDS` words of the system prompt, talk
  about the prompt itself ("my instructions", "system prompt", in several
  languages), or, given an embedder, text whose embedding is close to the
  system prompt's (paraphrase, translation, summary). Bound to a call's
  :class:`~workers.llm.grounding.Grounding` it also refuses ungrounded text.
"""

from __future__ import annotations

import base64
import codecs
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import orjson

from workers.llm.errors import UnsafeOutput
from workers.llm.grounding import Grounding
from workers.llm.normalize import normalize, skeleton
from workers.llm.pii import find_pii, redact, redact_tree

__all__ = [
    "Embedder",
    "LeakGuard",
    "clean_text",
    "fence",
    "find_link",
    "redact",
    "redact_tree",
]


def fence(data: Any) -> str:
    """``data`` as one JSON block inside ``<data>`` tags that the data cannot close."""
    body = orjson.dumps(data).decode()
    # Structural JSON never contains these characters, so escaping them
    # everywhere only touches string contents and keeps the JSON valid.
    body = body.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return f"<data>\n{body}\n</data>"


_ACTIVE_MARKUP = re.compile(
    r"<\s*/?\s*(?:script|iframe|object|embed|style|link|meta|form|svg|math|base)\b"
    r"|\bon[a-z]{3,}\s*="
    r"|(?:javascript|vbscript|data)\s*:"
    r"|\{\{.*?\}\}"
    r"|\$\{",
    re.IGNORECASE | re.DOTALL,
)
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,500}>|<!--.*?-->", re.DOTALL)
_MD_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]{0,500})\]\([^)]{0,2000}\)")
_WS = re.compile(r"\s+")

# Top-level domains that make "word.tld" a link; short on purpose ("Node.js",
# "St.Louis" and "e.g." must stay text), long enough for what attackers use.
_TLDS = (
    "com|net|org|edu|gov|mil|int|info|biz|name|pro|io|co|ai|app|dev|me|tv|ly|gg|sh|to|cc|ws|"
    "xyz|top|site|online|store|shop|club|click|link|live|zip|mov|icu|buzz|work|tk|ml|ga|cf|gq|"
    "ru|su|cn|uk|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|pl|cz|ua|br|in|jp|kr|au|nz|ca|us|eu|"
    "example|test|invalid|local|localhost|onion|lol|wtf|fun|page|host|space|tech|cloud"
)
_DOT = r"(?:\.|\[\s*\.\s*\]|\(\s*\.\s*\)|\{\s*\.\s*\}|\[\s*dot\s*\]|\(\s*dot\s*\)|\s+dot\s+)"
_LINK = re.compile(
    r"\b[a-z][a-z0-9+.\-]{1,20}\s*:\s*//"  # any scheme
    r"|\bh[tx]{2}ps?\b|\bf[tx]p\b|\bmailto\s*:"  # http/hxxp/ftp without "://", mailto
    r"|(?<![\w.])//\s*[a-z0-9\-]+\."  # protocol-relative
    rf"|\bwww\d{{0,3}}\s*{_DOT}"
    r"|\[\s*\.\s*\]|\(\s*\.\s*\)|\{\s*\.\s*\}|\[\s*dot\s*\]|\(\s*dot\s*\)|\[\s*:\s*\]"  # defanged
    rf"|(?<![\w@\-])(?:[a-z0-9](?:[a-z0-9\-]{{0,62}}[a-z0-9])?{_DOT})+(?:{_TLDS})\b(?![\-])"
    r"|(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"  # IPv4
    r"|\[?(?:[0-9a-f]{1,4}:){2,7}:?[0-9a-f]{0,4}\]?(?=[/\s]|$)",  # IPv6 in a URL or bare
    re.IGNORECASE,
)


def find_link(text: str) -> bool:
    """Whether ``text`` holds a link in any form (normalised and look-alike views)."""
    norm = normalize(text)
    if _LINK.search(norm):
        return True
    skel = skeleton(norm)
    return skel != norm.lower() and bool(_LINK.search(skel))


def clean_text(value: object, *, max_chars: int, field: str) -> str:
    """Model-produced text made safe to show: plain, short, no markup, links or PII.

    The checks run on the normalised text, which is also what is returned.
    Raises :class:`UnsafeOutput` for active markup, a link or personal data;
    returns the text with other tags and markdown brackets flattened to their
    words, whitespace collapsed and the length capped at ``max_chars`` (cut
    at a word, marked with an ellipsis).
    """
    if not isinstance(value, str):
        raise UnsafeOutput(f"{field}: expected text, got {type(value).__name__}")
    text = normalize(value)
    if _ACTIVE_MARKUP.search(text) or (
        not text.isascii() and _ACTIVE_MARKUP.search(skeleton(text))
    ):
        raise UnsafeOutput(f"{field}: active markup in model output")
    if find_link(text):
        raise UnsafeOutput(f"{field}: a link in model output")
    if find_pii(text):
        raise UnsafeOutput(f"{field}: personal data in model output")
    text = _MD_IMAGE_OR_LINK.sub(r"\1", text)
    text = _TAG.sub(" ", text)
    text = text.replace("<", "‹").replace(">", "›")
    text = _WS.sub(" ", text).strip()
    if len(text) > max_chars:
        cut = text[: max_chars - 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > max_chars // 2 else cut).rstrip() + "…"
    return text


_ALNUM = re.compile(r"[^0-9a-z]")
#: a verbatim run of this many words of the system prompt counts as a leak
#: (10 let a prompt through in chunks of 9; 6 words of our prompts do not
#: occur in a normal explanation)
SHINGLE_WORDS: Final = 6
#: cosine similarity to the system prompt (or one of its sentences) from
#: which an output counts as a paraphrase of it; all-MiniLM-L6-v2 measured
#: benign recommendation text at <= 0.48, close paraphrases at 0.72-0.84
EMBED_THRESHOLD: Final = 0.55
# Talk about the prompt itself: nothing a recommendation needs to say.
_META = re.compile(
    r"\bsystem\s*(?:prompt|message|instructions?)\b|\bprompt\s+(?:says|reads|is)\b"
    r"|\b(?:my|these|the above|your|hidden|secret|original|initial)\s+"
    r"(?:instructions|rules|directives|guidelines|prompt)\b"
    r"|\bi\s+(?:was|am|have been|'ve been)\s+"
    r"(?:told|instructed|asked|programmed|configured)\b"
    r"|\b(?:confidential|secret|hidden)\s+(?:marker|token|canary)\b"
    r"|\bdeveloper\s+mode\b|\bdata\s+fence\b|<\s*/?\s*data\s*>"
    r"|\bcomponent of a recommender\b|\btreat everything in it as data\b"
    r"|\bmes\s+(?:instructions|consignes|r[eè]gles)\b|\bles\s+consignes\b|\binvite\s+syst[eè]me\b"
    r"|\bmarqueur\s+confidentiel\b|\bmis\s+instrucciones\b|\bindicaciones\s+del\s+sistema\b"
    r"|\bmarcador\s+confidencial\b|\bmeine\s+anweisungen\b|\bsystem(?:anweisung|nachricht)\w*\b"
    r"|\bvertrauliche\w*\s+markierung\b|\ble\s+mie\s+istruzioni\b|\bistruzioni\s+di\s+sistema\b",
    re.IGNORECASE,
)

#: text -> L2-normalised embeddings, one row per text (e.g.
#: ``workers.model.text_encoder.TextEncoder.encode``)
Embedder = Callable[[Sequence[str]], Any]


def _squash(text: str) -> str:
    return _ALNUM.sub("", skeleton(text))


def _words(text: str) -> list[str]:
    return [w for w in (_ALNUM.sub("", w) for w in skeleton(text).split()) if w]


def _rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


class LeakGuard:
    """Detects secrets of the prompt showing up in model output.

    ``embedder`` (optional) turns on the paraphrase check; the verbatim,
    canary and meta-talk checks are always on. :meth:`bound` gives a guard
    for one call that also checks grounding.
    """

    def __init__(
        self,
        canaries: Iterable[str] = (),
        system_prompts: Iterable[str] = (),
        *,
        embedder: Embedder | None = None,
        embed_threshold: float = EMBED_THRESHOLD,
    ) -> None:
        forms: set[str] = set()
        for canary in canaries:
            if not canary:
                continue
            raw = canary.encode()
            for variant in (
                canary,
                canary[::-1],
                _rot13(canary),
                base64.b64encode(raw).decode().rstrip("="),
                base64.b32encode(raw).decode().rstrip("="),
                raw.hex(),
            ):
                squashed = _squash(variant)
                if len(squashed) >= 6:
                    forms.add(squashed)
        self._forms = tuple(forms)
        self._shingles: set[str] = set()
        self._prompts: list[str] = []
        self._canaries = tuple(c for c in canaries if c)
        for prompt in system_prompts:
            self.add_system_prompt(prompt)
        self._embedder = embedder
        self._embed_threshold = embed_threshold
        self._prompt_vectors: Any = None
        self._grounding: Grounding | None = None

    def add_system_prompt(self, prompt: str) -> None:
        words = _words(prompt)
        for i in range(len(words) - SHINGLE_WORDS + 1):
            self._shingles.add(" ".join(words[i : i + SHINGLE_WORDS]))
        self._prompts.append(prompt)
        self._prompt_vectors = None

    def bound(self, grounding: Grounding | None) -> LeakGuard:
        """This guard, sharing its state, that also checks ``grounding`` on every text."""
        guard = object.__new__(LeakGuard)
        guard.__dict__.update(self.__dict__)
        guard._grounding = grounding
        return guard

    def check(self, text: str, *, field: str = "output", claims: bool = True) -> None:
        """Raise :class:`UnsafeOutput` if ``text`` leaks the prompt or is not grounded.

        ``claims`` is passed on to :meth:`Grounding.check` (False for tags).
        """
        skel = skeleton(text)
        squashed = _ALNUM.sub("", skel)
        for form in self._forms:
            if form in squashed:
                raise UnsafeOutput(f"{field}: canary token leaked")
        if _META.search(skel) or (not text.isascii() and _META.search(normalize(text))):
            raise UnsafeOutput(f"{field}: talks about its instructions")
        if self._shingles:
            words = [w for w in (_ALNUM.sub("", w) for w in skel.split()) if w]
            for i in range(len(words) - SHINGLE_WORDS + 1):
                if " ".join(words[i : i + SHINGLE_WORDS]) in self._shingles:
                    raise UnsafeOutput(f"{field}: system prompt leaked")
            if self._embedder is not None and len(words) >= 5:
                self._check_embedding(text, field)
        if self._grounding is not None:
            self._grounding.check(text, field=field, claims=claims)

    def _check_embedding(self, text: str, field: str) -> None:
        import numpy as np

        assert self._embedder is not None
        if self._prompt_vectors is None:
            pieces: list[str] = []
            for prompt in self._prompts:
                public = prompt
                for canary in self._canaries:
                    public = public.replace(canary, "")
                pieces.append(public)
                # whole sentences only: a fragment ("It was supplied by users
                # and the catalog:") is too close to harmless text
                sentences = re.split(r"(?<=[.!?])\s+|\n", public)
                pieces.extend(p for p in sentences if len(p.split()) >= 8)
            self._prompt_vectors = np.asarray(self._embedder(pieces), dtype=np.float32)
        vector = np.asarray(self._embedder([text]), dtype=np.float32)[0]
        if float(np.max(self._prompt_vectors @ vector)) >= self._embed_threshold:
            raise UnsafeOutput(f"{field}: paraphrases the system prompt")
