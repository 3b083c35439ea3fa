"""Units of the output checks: normalisation, links, grounding, leak guard (no server)."""

from __future__ import annotations

import base64

import pytest

from workers.llm.errors import UnsafeOutput
from workers.llm.grounding import Grounding, check_grounded
from workers.llm.normalize import normalize, project, skeleton
from workers.llm.safety import LeakGuard, clean_text, find_link

CANARY = "CANARY-9c41e7d2b8"


@pytest.mark.parametrize(
    "raw,seen",
    [
        ("java\u200bscript:", "javascript:"),
        ("a\x9b31mb\x9d0;x\x07c", "abc"),
        ("\uff23\uff21\uff2e", "CAN"),
        ("&#106;avascript&#58;", "javascript:"),
        ("&amp;lt;b&amp;gt;", "<b>"),
        ("soft\u00adhyphen\u202e", "softhyphen"),
        ("two\n\tlines", "two lines"),
    ],
)
def test_normalize_shows_what_a_reader_sees(raw: str, seen: str) -> None:
    assert normalize(raw) == seen


def test_skeleton_folds_look_alikes_and_project_maps_back() -> None:
    assert skeleton("\u0421\u0410NARY") == "canary"
    view, origin = project("a&#64;b\u200bc")
    assert view == "a@bc" and origin == [0, 1, 6, 8, 9]


LINKS = [
    "https://evil.example/x",
    "see www.evil.io",
    "evilfilms.ru has it",
    "go to 203.0.113.7",
    "hxxps://evil[.]example",
    "evil(.)net",
    "evil dot com",
    "\uff45\uff56\uff49\uff4c\uff0e\uff43\uff4f\uff4d",
    "\u0435vil.\u0441\u043em",
    "h\u200bttps://x",
    "mailto:x",
    "//cdn.evil.example/a.js",
]
NOT_LINKS = [
    "e.g. a calm film",
    "Node.js tutorials",
    "St.Louis blues",
    "rated 7.5 out of 10",
    "Mr. Smith goes to Washington",
    "the U.S. version, 2001: A Space Odyssey",
]


@pytest.mark.parametrize("text", LINKS)
def test_links_in_any_form_are_found(text: str) -> None:
    assert find_link(text)
    with pytest.raises(UnsafeOutput):
        clean_text(text, max_chars=200, field="t")


@pytest.mark.parametrize("text", NOT_LINKS)
def test_text_that_only_looks_dotted_is_no_link(text: str) -> None:
    assert not find_link(text)


def test_clean_text_refuses_hidden_markup_and_pii_and_returns_normalised_text() -> None:
    for hostile in ("[x](java\u200bscript:alert(1))", "&lt;script&gt;", "mail a@b.com"):
        with pytest.raises(UnsafeOutput):
            clean_text(hostile, max_chars=200, field="t")
    assert clean_text("ﬁne \u200bfilm", max_chars=200, field="t") == "fine film"


def test_grounding_allows_only_the_calls_items() -> None:
    data = {
        "user": {"request": "write: user 12 loved i9, it won an Oscar, rated 9.8"},
        "candidates": [
            {"id": "i1", "title": "Heat", "description": "Oscar-nominated crime drama"},
            {"id": "i2", "title": "Up"},
        ],
    }
    grounding = Grounding.from_data(data, known_ids={"i1", "i2", "i9"}, known_titles={"Alien"})
    grounding.check("Heat (i1) suits you better than Up, an Oscar-nominated drama")
    for text in (
        "user 12 loved it",
        "like uid:7",
        "ask @dana_k",
        "also try i9",
        "like tt0111161",
        "better than Alien",
        "rated 9.8 on IMDb",
        "97% of viewers agree",
    ):
        with pytest.raises(UnsafeOutput):
            grounding.check(text)
    grounding.check("it won an Oscar")  # backed: the catalog says Oscar-nominated
    grounding.check("a PG-13 heist film, nothing like i1")
    grounding.check("97% of viewers agree", claims=False)  # tags: no claims checked


def test_check_grounded_one_shot() -> None:
    check_grounded("Heat fits", allowed_ids={"i1"}, allowed_titles={"Heat"})
    with pytest.raises(UnsafeOutput):
        check_grounded("user 77 liked it", allowed_ids={"i1"})
    with pytest.raises(UnsafeOutput):
        check_grounded("won the Academy Award", allowed_ids={"i1"}, catalog_text="a quiet drama")


@pytest.mark.parametrize(
    "leak",
    [
        CANARY,
        " ".join(CANARY),
        CANARY[::-1],
        base64.b64encode(CANARY.encode()).decode(),
        CANARY.encode().hex(),
        "".join(chr(ord(c) + 0xFEE0) for c in CANARY),
        CANARY.replace("A", "\u0410").replace("C", "\u0421"),
        "".join(f"&#{ord(c)};" for c in CANARY),
        "\u200b".join(CANARY),
        "My instructions say I must rank",
        "Voici mes instructions",
    ],
)
def test_leak_guard_sees_through_disguises(leak: str) -> None:
    guard = LeakGuard([CANARY], ["You are the rank component of a recommender system."])
    with pytest.raises(UnsafeOutput):
        guard.check(f"A fine film. {leak}")


def test_meta_talk_is_refused_even_when_the_catalog_says_it() -> None:
    # an item description can carry an injection too: strict on purpose,
    # at the price of refusing a real "club with hidden rules" blurb
    guard = LeakGuard([], ["You are the rank component of a recommender system."])
    data = {
        "candidates": [{"id": "i1", "title": "Cult", "description": "a club with hidden rules"}]
    }
    with pytest.raises(UnsafeOutput):
        guard.bound(Grounding.from_data(data)).check("A thriller about a club with hidden rules")


def test_leak_guard_verbatim_threshold_is_six_words() -> None:
    prompt = "Rank the candidate items for this user, most relevant first, using their history."
    guard = LeakGuard([], [prompt])
    guard.check("Rank the candidate items for you")  # five words of the prompt
    with pytest.raises(UnsafeOutput):
        guard.check("so: the candidate items for this user, most relevant")
