"""Twelve scripted multi-turn conversations through the chat role (rules path, no LLM).

Each simulated user wants one genre (four also want a second one they never
state). They greet, state the genre (some with a genre to avoid, some by
naming a film they liked), accept a list whose top item has what they want,
and otherwise turn the top item down. Reported: task
completion rate and turns to the first accepted recommendation. Asserted: the
stated preferences change the items, a turned-down item never comes back, and
most conversations succeed within six turns.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import ChatMessage, ChatReply
from tests.workers.catalog_data import MOVIES
from tests.workers.conftest import OpenRuntime
from workers.quality import conversation_efficiency, genre_diversity, task_completion_rate

GENRES = {item_id: set(genres) for item_id, _, genres in MOVIES}
TITLES = {item_id: title for item_id, title, _ in MOVIES}
MAX_TURNS = 6


@dataclass(frozen=True)
class Script:
    user: str
    wants: str
    opening: str
    # A second genre the user also wants but does not say: only feedback finds it.
    also: str | None = None

    def accepts(self, item_id: str) -> bool:
        genres = GENRES[item_id]
        return self.wants in genres and (self.also is None or self.also in genres)


SCRIPTS = [
    Script("c1", "Comedy", "I'd like a comedy"),
    Script("c2", "Horror", "something scary please"),
    Script("c3", "Sci-Fi", "a sci-fi film"),
    Script("c4", "Romance", "a romantic movie, no horror", also="Drama"),
    Script("c5", "Drama", "I want a drama"),
    Script("c6", "Action", "action, but not war", also="Thriller"),
    Script("c7", "Animation", "an animated film for the kids"),
    Script("c8", "Crime", "a crime story"),
    Script("c9", "Thriller", "a thriller with suspense", also="Crime"),
    Script("c10", "Sci-Fi", "more like Star Voyage"),
    Script("c11", "Comedy", "more like Laugh Riot, no horror", also="Romance"),
    Script("c12", "Western", "a western"),
]


async def _converse(rt, script: Script) -> tuple[int | None, list[ChatReply], set[str]]:  # type: ignore[no-untyped-def]
    """(turn of the first acceptance or None, replies, items turned down)."""
    replies: list[ChatReply] = []
    turned_down: set[str] = set()
    texts = ["hi", script.opening]
    accepted: int | None = None
    turn = 0
    while turn < MAX_TURNS:
        text = texts[turn] if turn < len(texts) else texts[-1]
        message = ChatMessage(f"{script.user}-{turn}", f"s-{script.user}", script.user, text, turn)
        [out] = await rt.handler("chat")([message])
        reply = out.event
        assert isinstance(reply, ChatReply)
        replies.append(reply)
        shown = [i.item_id for i in reply.items]
        assert not turned_down & set(shown), f"{script.user}: a turned-down item returned"
        turn += 1
        if accepted is not None:
            break
        if shown and script.accepts(shown[0]):
            texts.append("great, thanks")
            accepted = turn
        elif shown:
            turned_down.add(shown[0])
            texts.append(f"not {TITLES[shown[0]]}")
    return accepted, replies, turned_down


async def test_twelve_scripted_conversations(open_runtime: OpenRuntime) -> None:
    results = []
    async with open_runtime(["chat"]) as rt:
        for script in SCRIPTS:
            results.append((script, *await _converse(rt, script)))
    accepted_at = [t for _, t, _, _ in results]
    rate = task_completion_rate(accepted_at)
    # every user message gets one reply: user + assistant messages = 2 x replies
    eff = conversation_efficiency(accepted_at, messages=[2 * len(r) for _, _, r, _ in results])
    lists = [[GENRES[i.item_id] for i in reply.items] for _, _, rs, _ in results for reply in rs]
    diversity = [genre_diversity(g) for g in lists if len(g) > 1]
    print(
        f"\n{len(SCRIPTS)} conversations: task completion {rate:.0%}; turns to first "
        f"accepted recommendation: mean {eff.mean_turns:.2f}, median {eff.median_turns}, "
        f"max {eff.max_turns} (greeting counted as turn 1); turn pairs per conversation "
        f"(the seed's efficiency) {eff.mean_turn_pairs:.2f}; genre diversity within a "
        f"list {sum(diversity) / max(len(diversity), 1):.3f}"
    )
    for script, accepted, replies, down in results:
        print(
            f"  {script.user} wants {script.wants}: accepted at {accepted}, turned down {len(down)}"
        )
        greet, stated = replies[0], replies[1]
        assert greet.state == "preference_elicitation" and not greet.items
        assert stated.items, "a stated preference yields a list"
        assert "history" not in stated.text, "these users have no history to cite"
    assert rate >= 0.75
