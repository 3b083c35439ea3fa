"""A small movie catalog for the logic tests: titles and genres people would name."""

from __future__ import annotations

from contracts import CatalogChange

MOVIES: list[tuple[str, str, tuple[str, ...]]] = [
    ("m1", "Laugh Riot", ("Comedy",)),
    ("m2", "The Funny Farm", ("Comedy",)),
    ("m3", "Office Pranks", ("Comedy",)),
    ("m4", "Wedding Crashers Again", ("Comedy", "Romance")),
    ("m5", "Night of Screams", ("Horror",)),
    ("m6", "The Haunting Hour", ("Horror", "Thriller")),
    ("m7", "Zombie Harbor", ("Horror",)),
    ("m8", "Star Voyage", ("Sci-Fi", "Adventure")),
    ("m9", "Galaxy Outpost", ("Sci-Fi",)),
    ("m10", "Robot Dawn", ("Sci-Fi", "Action")),
    ("m11", "Love in Paris", ("Romance", "Drama")),
    ("m12", "Summer Hearts", ("Romance",)),
    ("m13", "The Long Goodbye Letter", ("Drama",)),
    ("m14", "Courtroom Silence", ("Drama", "Crime")),
    ("m15", "Bank Job", ("Crime", "Thriller")),
    ("m16", "Highway Chase", ("Action",)),
    ("m17", "Explosion Point", ("Action", "Thriller")),
    ("m18", "Toy Kingdom", ("Animation", "Children's")),
    ("m19", "Dragon Pals", ("Animation", "Children's", "Fantasy")),
    ("m20", "Frontier Town", ("Western",)),
    ("m21", "Deep Sea Mysteries", ("Documentary",)),
    ("m22", "Moon Base Comedy", ("Comedy", "Sci-Fi")),
    ("m23", "The Last Laugh Show", ("Comedy",)),
    ("m24", "Haunted Carnival", ("Horror", "Comedy")),
]


def catalog_changes(ts_ms: int = 1_000) -> list[CatalogChange]:
    return [
        CatalogChange(
            f"cat-{item_id}",
            item_id,
            "upsert",
            ts_ms,
            title=f"{title} (1995)",
            attributes={"genres": genres, "year": 1995},
        )
        for item_id, title, genres in MOVIES
    ]


def item_texts() -> dict[str, str]:
    return {
        item_id: f"{title} (1995). Genres: {', '.join(genres)}."
        for item_id, title, genres in MOVIES
    }
