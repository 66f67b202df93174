"""Vocabulary of the synthetic world: shapes, colours, sizes, relations, position and region words.

Shared by the generator (:mod:`pixelllm.data.synthetic`), the tests, tokenizer training and the
per-word-class error analysis, so that every part of the repo names things the same way.
Pure Python constants: importing this module does no I/O and imports nothing heavy.
"""
from __future__ import annotations

# --- objects ---------------------------------------------------------------------------------------
#: Shape names = COCO category names; category ids are 1-based positions in this tuple.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")

#: RefCOCO's testA/testB split people vs. other objects. Ours splits shape categories into two groups:
#: testA images are those whose targets are "simple" shapes, testB those with "complex" shapes.
#: The group name is the COCO ``supercategory`` of each shape.
SHAPE_GROUPS: dict[str, tuple[str, ...]] = {
    "simple": ("circle", "square", "triangle"),
    "complex": ("star", "diamond", "cross"),
}
SHAPE_TO_GROUP: dict[str, str] = {s: g for g, ss in SHAPE_GROUPS.items() for s in ss}
TEST_SPLIT_OF_GROUP: dict[str, str] = {"simple": "testA", "complex": "testB"}

#: Object colours, RGB uint8. Saturated and far apart (also from the grey/beige backgrounds) so a tiny
#: model can name them at 128 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (150, 55, 190),
    "orange": (245, 135, 25),
}

#: Size word -> shape "radius" as a fraction of the image side (half the extent of the shape).
SIZES: dict[str, float] = {"small": 0.07, "medium": 0.10, "big": 0.145}

#: Background tones (low saturation, never confused with an object colour): word(s) -> RGB.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (120, 120, 118),
    "dark grey": (62, 62, 66),
    "light grey": (178, 178, 172),
    "beige": (192, 178, 148),
}

# --- relations and positions -----------------------------------------------------------------------
#: Binary spatial relations between two objects, as written in expressions ("the circle left of the star").
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")

#: Absolute position of an object's visible-box centre by image thirds (column, row) -> narrative phrase.
#: Columns: "left" (< 1/3 of the width), "center", "right" (>= 2/3); rows likewise "top"/"middle"/"bottom".
POSITION_PHRASES: dict[tuple[str, str], str] = {
    ("left", "top"): "in the top left corner",
    ("center", "top"): "at the top",
    ("right", "top"): "in the top right corner",
    ("left", "middle"): "on the left",
    ("center", "middle"): "in the middle",
    ("right", "middle"): "on the right",
    ("left", "bottom"): "in the bottom left corner",
    ("center", "bottom"): "at the bottom",
    ("right", "bottom"): "in the bottom right corner",
}

#: Region words the narrative pointer can be "on" that are not objects.
REGION_WORDS: tuple[str, ...] = ("background", "surface", "image", "picture")

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")

# --- word classes (for per-word-class trace errors) -----------------------------------------------
POSITION_WORDS: frozenset[str] = frozenset(
    w for p in POSITION_PHRASES.values() for w in p.split() if w not in ("in", "the", "on", "at")
) | frozenset(("left", "right", "above", "below", "next", "top", "bottom", "middle", "corner"))
ATTRIBUTE_WORDS: frozenset[str] = frozenset(COLORS) | frozenset(SIZES)
SHAPE_WORDS: frozenset[str] = frozenset(SHAPES) | frozenset(s + "s" for s in SHAPES) | frozenset(("crosses",))


def word_class(word: str) -> str:
    """Class of one word for error breakdowns: "shape" | "attribute" | "position" | "region" | "function".

    Case and surrounding punctuation are ignored (``"Circle."`` -> "shape").
    """
    w = word.strip(".,;:!?\"'").lower()
    if w in SHAPE_WORDS:
        return "shape"
    if w in ATTRIBUTE_WORDS:
        return "attribute"
    if w in POSITION_WORDS:
        return "position"
    if w in REGION_WORDS or w in ("grey", "beige", "dark", "light"):
        return "region"
    return "function"


def category_id(shape: str) -> int:
    """COCO category id of a shape (1-based index into :data:`SHAPES`)."""
    return SHAPES.index(shape) + 1


def all_words() -> list[str]:
    """Every content word the generator can emit (sorted), e.g. to check a tokenizer's coverage."""
    words: set[str] = set(SHAPES) | SHAPE_WORDS | set(COLORS) | set(SIZES) | set(NUMBER_WORDS)
    for phrase in (*RELATIONS, *POSITION_PHRASES.values(), *BACKGROUNDS, *REGION_WORDS):
        words.update(phrase.split())
    return sorted(words)
