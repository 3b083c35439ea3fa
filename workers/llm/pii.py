"""Personal data found in text, and replaced by typed placeholders (OWASP LLM02).

:func:`redact` is the one entry point the LLM library uses on everything that
leaves the process; :func:`find_pii` returns what it would replace.

Detection runs on a normalised view of the text (:func:`normalize.project`:
entities decoded, NFKC, zero-width and control characters dropped), so
``jane&#64;example.com`` or full-width digits are seen for what they are, and
the spans are cut out of the original text: everything that is not personal
data stays exactly as it was.

What is found, and how (checksums and real numbering plans where a library
has them, rather than shapes alone):

=============  ================================================================
[EMAIL]        plain, quoted local parts, obfuscated (``[at]``, ``AT``/``DOT``,
               `` at `` / `` dot `` with a real top-level domain)
[CARD]         13-19 digits, separators allowed, Luhn-valid (python-stdnum)
[IBAN]         any case and spacing, checksum-valid (python-stdnum); upper-case
               IBAN shapes also without a valid checksum
[SSN]          US SSN with or without separators (the SSA's structural rules)
[NATIONAL_ID]  UK National Insurance number; Spanish DNI and NIE with a valid
               check letter (python-stdnum)
[PHONE]        national and international numbers of several regions, with
               or without separators (phonenumbers' matcher); any ``+`` number
[IP]           IPv4 and IPv6 addresses (validated by :mod:`ipaddress`)
[DOB]          numeric full dates; written dates after a birth cue ("born",
               "DOB", "birthday", "geboren", "nacido"...)
[ADDRESS]      street addresses (English, French, Spanish/Italian/Portuguese,
               German/Dutch/Nordic forms), PO boxes, UK postcodes; the postcode,
               city and country that follow an address go with it
=============  ================================================================

presidio-analyzer was considered and left out: it depends on spaCy (and
twenty more packages) even for its pattern recognizers, and its tldextract
dependency fetches the public suffix list over the network on first use.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Final

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.es import dni as _dni
from stdnum.es import nie as _nie

from workers.llm.normalize import project

__all__ = ["PiiSpan", "find_pii", "redact", "redact_tree"]


@dataclass(frozen=True)
class PiiSpan:
    """``text[start:end]`` of the original text is personal data of kind ``label``."""

    start: int
    end: int
    label: str


#: regions whose national formats the phone matcher tries (``+`` numbers are
#: found in any); each costs one pass over the text
PHONE_REGIONS: Final = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IE", "IN", "AU", "BR")

# Top-level domains an obfuscated "name at host dot tld" must end in (the
# bracketed and upper-case forms need none: nobody writes [at] by accident).
_TLD_WORDS = (
    "com net org edu gov mil int io co uk de fr es it nl be ch at se no dk fi ie pt pl cz "
    "ru ua cn jp kr in au nz ca us br mx ar info biz me tv app dev ai xyz online site tech "
    "eu email mail example test"
)
TLDS: Final = frozenset(_TLD_WORDS.split())

_ATSIGN = r"(?:\s*(?:\[\s*at\s*\]|\(\s*at\s*\)|\{\s*at\s*\}|<\s*at\s*>)\s*|\s+(?:at|AT)\s+|\s*@\s*)"
_DOTSIGN = (
    r"(?:\s*(?:\[\s*dot\s*\]|\(\s*dot\s*\)|\{\s*dot\s*\}|<\s*dot\s*>|\[\.\]|\(\.\))\s*"
    r"|\s+(?:dot|DOT)\s+|\.)"
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-_%+]{0,62})"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62})"
_EMAIL_PLAIN: Final = re.compile(
    r"(?:\"[^\"\n]{1,64}\"|[A-Za-z0-9._%+\-]+)\s*@\s*[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"
)
_EMAIL: Final = re.compile(
    rf"(?<![\w.])(?:\"[^\"\n]{{1,64}}\"|{_LABEL}(?:{_DOTSIGN}{_LABEL}){{0,4}}){_ATSIGN}"
    rf"{_HOST}(?:{_DOTSIGN}{_HOST}){{1,4}}(?![\w])",
    re.IGNORECASE,
)
_AT_HINT = re.compile(r"@|\bat\b", re.IGNORECASE)
_PLAIN_AT = re.compile(r"\s+at\s+", re.IGNORECASE)

_CARD: Final = re.compile(r"(?<![\d])(?:\d[ \-]?){12,18}\d(?![\d])")
_IBAN: Final = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,32}")
_IBAN_SHAPE: Final = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SSN_SEP: Final = re.compile(r"(?<![\d\-])\d{3}[ \-.]\d{2}[ \-.]\d{4}(?![\d\-])")
_NINE: Final = re.compile(r"(?<![\d])\d{9}(?![\d])")
_NINO: Final = re.compile(
    r"\b[A-Z]{2}"
    r"[ \-]?\d{2}[ \-]?\d{2}[ \-]?\d{2}[ \-]?[A-D]\b",
    re.IGNORECASE,
)
_DNI: Final = re.compile(r"\b\d{8}[ \-]?[A-Za-z]\b")
_NIE: Final = re.compile(r"\b[XYZxyz][ \-]?\d{7}[ \-]?[A-Za-z]\b")
_PLUS_PHONE: Final = re.compile(r"(?<![\w+])\+\d(?:[ .\-()]{0,2}\d){7,16}(?!\d)")
_GROUPED_DIGITS: Final = re.compile(
    r"(?<![\w+])(?:\(\d{2,5}\)[ .\-]?)?\d{2,5}(?:[ .\-]\d{2,6}){1,4}(?![\w])"
)
_IPV4: Final = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6: Final = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

_MONTHS = (
    r"(?:jan(?:uary|vier|uar)?|feb(?:ruary|ruar)?|f[ée]v(?:rier)?|mar(?:ch|s|zo)?|m[äa]rz|"
    r"apr(?:il)?|avr(?:il)?|abr(?:il)?|may|mai|mayo|jun(?:e|i|io)?|juin|jul(?:y|i|io)?|"
    r"juil(?:let)?|aug(?:ust)?|ao[uû]t|ago(?:sto)?|sep(?:t(?:ember|embre|iembre)?)?|"
    r"oct(?:ober|obre)?|okt(?:ober)?|nov(?:ember|embre|iembre)?|dec(?:ember)?|d[ée]c(?:embre)?|"
    r"dez(?:ember)?|dic(?:iembre)?)\.?"
)
_NUMERIC_DATE: Final = re.compile(
    r"(?<![\d./\-])(?:\d{1,2}[./\-]\d{1,2}[./\-](?:\d{4}|\d{2})|\d{4}[./\-]\d{1,2}[./\-]\d{1,2})"
    r"(?![\d./\-])"
)
_WORD_DATE: Final = re.compile(
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th|er|º)?\.?\s+(?:of\s+|de\s+)?{_MONTHS}(?:,?\s+(?:de\s+)?\d{{4}})?"
    rf"|{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|{_MONTHS}\s+\d{{4}})\b",
    re.IGNORECASE,
)
_BIRTH_CUE: Final = re.compile(
    r"\b(?:born|birth\w*|b\.|d\.?o\.?b\.?|bday|geboren|geburt\w*|n[ée]e?|naissance|"
    r"nacid[oa]|nacimiento|nat[oa]|nascit[ao]|cumplea[ñn]os|anniversaire)\b",
    re.IGNORECASE,
)

_CAP = r"[A-ZÀ-ÝĀ-Ž][\w'’.\-]*"
_STRONG_STREET = (
    r"street|avenue|road|boulevard|lane|drive|terrace|parkway|highway|crescent|gardens|"
    r"strasse|straße|place|court|square|close"
)
_ABBR_STREET = r"St|Rd|Ave|Av|Blvd|Ln|Dr|Ct|Pl|Sq|Pkwy|Hwy|Cres|Gdns|Tce"
_WEAK_STREET = r"Way|Grove|Mews|Row|Walk|Hill|Green|Park|Rise|Vale|View|Wharf|Quay|Parade|Circus"
_UNIT = r"(?:(?:flat|apt|apartment|unit|suite|floor)\.?\s*[\w\-]{1,6},?\s+)?"
_STREETS: Final = (
    # number first, English: 742 Evergreen Terrace / Flat 2, 10 Downing St
    re.compile(
        rf"\b{_UNIT}\d{{1,5}}[A-Za-z]?,?\s+(?:[\w'’.\-]+\s+){{0,4}}(?:{_STRONG_STREET})\b\.?",
        re.IGNORECASE,
    ),
    re.compile(
        rf"\b{_UNIT}\d{{1,5}}[A-Za-z]?,?\s+(?:{_CAP}\s+){{0,4}}(?:{_ABBR_STREET}|{_WEAK_STREET})\b\.?"
    ),
    # number first, French: 12 rue de Rivoli, 4 bis avenue des Champs
    re.compile(
        r"\b\d{1,5}(?:\s?(?:bis|ter|[a-z]))?,?\s+(?:rue|avenue|av\.|boulevard|bd|place|chemin|"
        r"all[ée]e|impasse|quai|cours|route|square)\s+(?:(?:de|du|des|la|le|l['’]|d['’])\s*)*"
        rf"{_CAP}(?:\s+{_CAP}){{0,3}}",
        re.IGNORECASE,
    ),
    # street first: Calle Mayor 10, Via Roma 15, Rua Augusta, 274, Carrer de Mallorca 401
    re.compile(
        r"\b(?:calle|c/|avenida|avda\.?|plaza|pza\.?|paseo|camino|carrer|rua|via|viale|piazza|"
        r"corso|largo|rue|travessa|ronda)\s+(?:(?:de|del|de\s+la|la|los|las|dos|das|da|do|di|"
        rf"della|delle|dei|del)\s+)*{_CAP}(?:\s+{_CAP}){{0,3}},?\s*(?:n[º°o]\.?\s*)?\d{{1,5}}"
        r"(?:\s?[A-Za-z])?\b",
        re.IGNORECASE,
    ),
    # compound street names: Hauptstraße 5, Keizersgracht 123, Storgatan 4B
    re.compile(
        r"\b[A-ZÄÖÜÅ][\wäöüßåæø\-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|"
        r"ufer|gracht|laan|straat|plein|kade|steeg|vej|gade|gatan|vägen|veien|katu|utca|ulica)"
        r"\s*\d{1,5}\s?[a-zA-Z]?\b"
    ),
    re.compile(
        rf"\b{_CAP}\s+(?:Straße|Strasse|Str\.|Weg|Allee|Platz|Gasse|Ring|Damm)\s+\d{{1,5}}\s?[a-z]?\b"
    ),
    # PO boxes
    re.compile(
        r"\b(?:P\.?\s?O\.?\s?Box|Post\s+Office\s+Box|Postfach|Apartado(?:\s+de\s+Correos)?|"
        r"Bo[iî]te\s+Postale|Casilla(?:\s+de\s+Correo)?|Casella\s+Postale|Postbus|Postboks|"
        r"Box)\s*\.?\s*(?:No\.?\s*|n[º°o]\.?\s*)?\d{1,7}\b",
        re.IGNORECASE,
    ),
    re.compile(r"\bBP\s*\d{1,6}\b"),
)
_UK_POSTCODE = r"[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}"
_POSTCODE: Final = re.compile(rf"\b{_UK_POSTCODE}\b")
# What may follow an address and belongs to it: postcode, city, state, country.
_TAIL: Final = re.compile(
    rf"[,\s]+(?:{_UK_POSTCODE}\b|[A-Z]{{1,2}}-\d{{4,5}}\b|\d{{4,5}}(?:[ \-]?\d{{3,4}})?"
    rf"(?:\s[A-Z]{{2}}\b)?|[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?\b|{_CAP})"
)
_MAX_TAIL = 5


def _spans(view: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    add = found.append
    for m in _EMAIL_PLAIN.finditer(view) if "@" in view else ():
        add((m.start(), m.end(), "EMAIL"))
    found.extend(_obfuscated_emails(view))
    for m in _IBAN.finditer(view):
        span = _valid_iban(view, m)
        if span:
            add((*span, "IBAN"))
    for m in _IBAN_SHAPE.finditer(view):
        add((m.start(), m.end(), "IBAN"))
    for m in _CARD.finditer(view):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn.is_valid(digits):
            add((m.start(), m.end(), "CARD"))
    for m in _SSN_SEP.finditer(view):
        if _ssn_ok(re.sub(r"\D", "", m.group(0))):
            add((m.start(), m.end(), "SSN"))
    for m in _NINE.finditer(view):
        if _ssn_ok(m.group(0)):
            add((m.start(), m.end(), "SSN"))
    for m in _NINO.finditer(view):
        add((m.start(), m.end(), "NATIONAL_ID"))
    for m in _DNI.finditer(view):
        if _dni.is_valid(m.group(0)):
            add((m.start(), m.end(), "NATIONAL_ID"))
    for m in _NIE.finditer(view):
        if _nie.is_valid(m.group(0)):
            add((m.start(), m.end(), "NATIONAL_ID"))
    for m in _IPV4.finditer(view):
        if _is_ip(m.group(0)):
            add((m.start(), m.end(), "IP"))
    for m in _IPV6.finditer(view):
        if m.group(0).count(":") >= 2 and _is_ip(m.group(0)):
            add((m.start(), m.end(), "IP"))
    found.extend(_phones(view))
    for m in _NUMERIC_DATE.finditer(view):
        if _plausible_date(m.group(0)):
            add((m.start(), m.end(), "DOB"))
    for m in _WORD_DATE.finditer(view) if _BIRTH_CUE.search(view) else ():
        if _BIRTH_CUE.search(view, max(0, m.start() - 60), m.start()):
            add((m.start(), m.end(), "DOB"))
    for pattern in _STREETS:
        for m in pattern.finditer(view):
            add((m.start(), _tail(view, m.end()), "ADDRESS"))
    for m in _POSTCODE.finditer(view):
        add((m.start(), _tail(view, m.end()), "ADDRESS"))
    return found


def _obfuscated_emails(view: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    pos = 0 if _AT_HINT.search(view) else len(view)
    while (m := _EMAIL.search(view, pos)) is not None:
        pos = m.start() + 1  # a refused match may hide one that starts inside it
        text = m.group(0)
        if "@" not in text and not re.search(r"[\[({<]\s*at|\bAT\b", text):
            # plain " at " / " dot ": only with a real top-level domain
            last = re.split(r"\s+dot\s+|\.", text, flags=re.IGNORECASE)[-1].strip().lower()
            if last not in TLDS or not _PLAIN_AT.search(text):
                continue
        found.append((m.start(), m.end(), "EMAIL"))
        pos = m.end()
    return found


def _valid_iban(view: str, m: re.Match[str]) -> tuple[int, int] | None:
    """The longest prefix of the candidate (in whole groups) that is a valid IBAN."""
    text = m.group(0)
    cuts = [i for i in range(len(text), 14, -1) if i == len(text) or text[i] in " -"]
    for cut in cuts:
        if _iban.is_valid(text[:cut]):
            return m.start(), m.start() + cut
    return None


def _ssn_ok(digits: str) -> bool:
    # The SSA's structural rules only: python-stdnum also refuses well-known
    # published numbers (078-05-1120), which people still type as their own.
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _plausible_date(text: str) -> bool:
    parts = [int(p) for p in re.split(r"[./\-]", text)]
    if parts[0] > 31:  # year first
        _, a, b = parts
        return 1 <= a <= 12 and 1 <= b <= 31
    a, b, _ = parts
    return 1 <= a <= 31 and 1 <= b <= 31 and (a <= 12 or b <= 12)


# A run of digits a phone number could hide in; the matcher (slow: it tries
# every region) only sees these runs, not the whole text.
_DIGIT_RUN: Final = re.compile(r"\+?\(?\d[\d \t().\-/]{5,24}\d")


def _phones(view: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for run in _DIGIT_RUN.finditer(view):
        if sum(ch.isdigit() for ch in run.group(0)) < 7:
            continue
        start = max(0, run.start() - 1)
        window = view[start : run.end() + 1]
        for region in PHONE_REGIONS:
            matches = list(
                phonenumbers.PhoneNumberMatcher(
                    window, region, leniency=phonenumbers.Leniency.VALID
                )
            )
            for match in matches:
                found.append((start + match.start, start + match.end, "PHONE"))
            if matches:
                break
    for m in _PLUS_PHONE.finditer(view):
        found.append((m.start(), m.end(), "PHONE"))
    for m in _GROUPED_DIGITS.finditer(view):
        if sum(ch.isdigit() for ch in m.group(0)) >= 10:
            found.append((m.start(), m.end(), "PHONE"))
    return found


def _tail(view: str, end: int) -> int:
    """``end`` moved past the postcode, city and country that follow an address."""
    for _ in range(_MAX_TAIL):
        m = _TAIL.match(view, end)
        if not m:
            break
        end = m.end()
    return end


# which label a span found by several detectors gets
_PRIORITY: Final = {"EMAIL": 0, "CARD": 1, "IBAN": 2, "SSN": 3, "NATIONAL_ID": 4, "IP": 5}


def find_pii(text: str) -> list[PiiSpan]:
    """Personal data in ``text``: merged, ordered spans of the original text."""
    if not text:
        return []
    view, origin = project(text)
    raw = sorted(_spans(view), key=lambda s: (s[0], -s[1], _PRIORITY.get(s[2], 9)))
    merged: list[list[Any]] = []
    for start, end, label in raw:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            if end - start > last[1] - last[0]:
                last[2] = label
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, label])
    return [PiiSpan(origin[s], origin[e], label) for s, e, label in merged]


def redact(text: str) -> str:
    """``text`` with personal data replaced by ``[EMAIL]``, ``[PHONE]``, ``[ADDRESS]``...

    Idempotent; text without personal data is returned unchanged.
    """
    spans = find_pii(text)
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for span in spans:
        out.append(text[pos : span.start])
        out.append(f"[{span.label}]")
        pos = span.end
    out.append(text[pos:])
    return "".join(out)


#: keys whose values are our own identifiers, never user text
_ID_KEYS: Final = frozenset({"id", "item_id", "k"})


def redact_tree(value: Any) -> Any:
    """:func:`redact` on every string of a JSON-like tree (keys and ``id`` values kept)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: v if k in _ID_KEYS else redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return value
