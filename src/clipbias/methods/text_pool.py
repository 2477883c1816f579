"""Generator of this project's general TextSpan text pool (METHODS §3.2).

The pool is built from our own small word lists (colours, textures, shapes, materials,
scenes, animals, objects, people, occupations, times/weather, photo styles) combined with a
few short phrase patterns. Generation is deterministic (no randomness, fixed list orders and
a fixed interleaving rule), and the result is deduplicated case-insensitively.

The shipped file ``clipbias/resources/text_pool_general.txt`` is the output of
``python -m clipbias.methods.text_pool [path]``; a unit test checks it is reproducible.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

POOL_FILE = "text_pool_general.txt"
VERSION = "clipbias-general-pool v1"

COLOURS = [
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white",
    "grey", "golden", "silver", "turquoise", "beige", "dark blue", "pale green", "crimson",
]  # fmt: skip

TEXTURES = [
    "striped", "spotted", "checkered", "furry", "smooth", "rough", "glossy", "wrinkled",
    "woven", "cracked", "rusty", "polished", "fluffy", "scaly", "knitted", "dotted",
]  # fmt: skip

SHAPES = [
    "circle", "square", "triangle", "spiral", "star", "hexagon", "zigzag line", "wave pattern",
    "grid", "arch", "diamond shape", "crescent",
]  # fmt: skip

MATERIALS = [
    "wood", "metal", "glass", "stone", "paper", "plastic", "leather", "fabric", "concrete",
    "marble", "clay", "brick", "ice", "sand", "wool", "bamboo",
]  # fmt: skip

# scene -> locative phrase used after a subject ("A dog on a beach")
SCENES = {
    "beach": "on a beach",
    "forest": "in a forest",
    "desert": "in a desert",
    "mountain range": "in the mountains",
    "city street": "on a city street",
    "kitchen": "in a kitchen",
    "office": "in an office",
    "classroom": "in a classroom",
    "farm": "on a farm",
    "harbor": "at a harbor",
    "lake": "by a lake",
    "river bank": "on a river bank",
    "snowy field": "in a snowy field",
    "jungle": "in the jungle",
    "park": "in a park",
    "market": "at a market",
    "airport": "at an airport",
    "train station": "at a train station",
    "library": "in a library",
    "garden": "in a garden",
    "bridge": "on a bridge",
    "highway": "on a highway",
    "cave": "in a cave",
    "waterfall": "near a waterfall",
    "meadow": "in a meadow",
    "swamp": "in a swamp",
    "parking lot": "in a parking lot",
    "stadium": "in a stadium",
    "museum hall": "in a museum hall",
    "bakery": "in a bakery",
    "hospital corridor": "in a hospital corridor",
    "playground": "on a playground",
    "rooftop": "on a rooftop",
    "coral reef": "on a coral reef",
    "canyon": "in a canyon",
    "village square": "in a village square",
    "factory floor": "on a factory floor",
    "living room": "in a living room",
    "bathroom": "in a bathroom",
    "subway platform": "on a subway platform",
}
SCENE_NAMES = list(SCENES)

ANIMALS = [
    "dog", "cat", "horse", "cow", "sheep", "goat", "pig", "rabbit", "fox", "wolf", "bear",
    "deer", "elephant", "giraffe", "zebra", "lion", "tiger", "monkey", "squirrel", "owl",
    "eagle", "parrot", "duck", "swan", "pelican", "seagull", "sparrow", "penguin", "frog",
    "turtle", "snake", "lizard", "fish", "shark", "dolphin", "whale", "crab", "butterfly",
    "bee", "spider", "heron", "flamingo", "woodpecker", "crow", "camel", "kangaroo",
]  # fmt: skip

OBJECTS = [
    "chair", "table", "lamp", "bicycle", "car", "bus", "boat", "airplane", "umbrella",
    "backpack", "bottle", "cup", "teapot", "clock", "phone", "laptop", "book", "guitar",
    "piano", "ball", "kite", "hat", "shoe", "jacket", "scarf", "vase", "basket", "bucket",
    "ladder", "bench", "fence", "door", "window", "mirror", "candle", "key", "spoon",
    "knife", "plate", "bowl", "pillow", "blanket", "tent", "suitcase", "camera", "helmet",
    "sign", "mailbox", "flag", "balloon", "tractor", "truck", "sailboat", "skateboard",
]  # fmt: skip

PEOPLE = [
    "child", "teenager", "young woman", "young man", "old woman", "old man", "baby",
    "couple", "family", "group of friends", "crowd", "runner", "tourist", "student",
]  # fmt: skip

OCCUPATIONS = [
    "doctor", "nurse", "teacher", "chef", "farmer", "firefighter", "police officer",
    "pilot", "mechanic", "carpenter", "painter", "musician", "scientist", "engineer",
    "baker", "fisherman", "gardener", "waiter", "photographer", "dancer", "judge",
    "plumber", "electrician", "librarian", "soldier", "surgeon", "tailor", "barber",
    "astronaut", "lifeguard",
]  # fmt: skip

TIMES = [
    "at sunrise", "at sunset", "at night", "in the rain", "in fog", "in winter", "in autumn",
    "in spring", "in summer", "under a cloudy sky", "in bright sunlight", "during a storm",
]  # fmt: skip

STYLES = [
    "A close-up photo of", "A blurry photo of", "A black and white photo of",
    "An aerial view of", "A drawing of", "A painting of", "A cartoon of", "A sketch of",
    "A wide-angle photo of", "A low-light photo of",
]  # fmt: skip

ACTIONS = [
    "running", "sleeping", "eating", "swimming", "jumping", "sitting", "standing",
    "walking", "flying", "playing",
]  # fmt: skip


def _article(phrase: str) -> str:
    return "An" if phrase[:1].lower() in "aeiou" else "A"


def _a(phrase: str) -> str:
    """``"owl" -> "An owl"`` (sentence start)."""
    return f"{_article(phrase)} {phrase}"


def _a_lower(phrase: str) -> str:
    return f"{_article(phrase).lower()} {phrase}"


def _interleave(first: Sequence[str], second: Sequence[str], per_item: int) -> Iterator[tuple]:
    """Pairs (a, b): every ``a`` meets ``per_item`` items of ``second``, chosen by a fixed
    stride so all of ``second`` is covered evenly (deterministic, no RNG)."""
    n = len(second)
    stride = max(1, n // per_item)
    for i, a in enumerate(first):
        for k in range(per_item):
            yield a, second[(i + k * stride + k) % n]


def _patterns() -> Iterator[str]:
    # single words and short noun phrases
    for o in OBJECTS:
        yield _a(o)
    for a in ANIMALS:
        yield f"A photo of {_a_lower(a)}"
    for s in SCENE_NAMES:
        yield f"An image of {_a_lower(s)}"
    for p in PEOPLE:
        yield f"A photo of {_a_lower(p)}"
    for o in OCCUPATIONS:
        yield f"A portrait of {_a_lower(o)}"
    for s in SHAPES:
        yield f"{_a(s)} drawn on paper"
    for m in MATERIALS:
        yield f"A {m} texture"
    # attribute + noun
    for c, o in _interleave(COLOURS, OBJECTS, 6):
        yield f"{_a(c)} {o}"
    for t, m in _interleave(TEXTURES, MATERIALS, 4):
        yield f"{_a(t)} {m} surface"
    for m, o in _interleave(MATERIALS, OBJECTS, 4):
        yield f"{_a(o)} made of {m}"
    for c, s in _interleave(COLOURS, SHAPES, 3):
        yield f"{_a(c)} {s}"
    for t, a in _interleave(TEXTURES, ANIMALS, 3):
        yield f"{_a(t)} {a}"
    # things in places
    for a, s in _interleave(ANIMALS, SCENE_NAMES, 4):
        yield f"{_a(a)} {SCENES[s]}"
    for o, s in _interleave(OBJECTS, SCENE_NAMES, 2):
        yield f"{_a(o)} {SCENES[s]}"
    for p, s in _interleave(PEOPLE, SCENE_NAMES, 4):
        yield f"{_a(p)} {SCENES[s]}"
    for o, s in _interleave(OCCUPATIONS, SCENE_NAMES, 3):
        yield f"{_a(o)} working {SCENES[s]}"
    for o, obj in _interleave(OCCUPATIONS, OBJECTS, 2):
        yield f"{_a(o)} holding {_a_lower(obj)}"
    # conditions, styles, actions
    for s, t in _interleave(SCENE_NAMES, TIMES, 3):
        yield f"{_a(s)} {t}"
    for st, a in _interleave(STYLES, ANIMALS, 6):
        yield f"{st} {_a_lower(a)}"
    for st, o in _interleave(STYLES, OBJECTS, 5):
        yield f"{st} {_a_lower(o)}"
    for a, act in _interleave(ANIMALS, ACTIONS, 2):
        yield f"{_a(a)} {act}"
    for p, act in _interleave(PEOPLE, ACTIONS, 3):
        yield f"{_a(p)} {act} outdoors"
    for c, s in _interleave(COLOURS, SCENE_NAMES, 2):
        yield f"{_a(c)} building {SCENES[s]}"


def generate_pool() -> list[str]:
    """The general text pool: deterministic, deduplicated (case-insensitive), in order."""
    seen: set[str] = set()
    out: list[str] = []
    for text in _patterns():
        text = " ".join(text.split())
        key = text.lower()
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def write_pool(path: str | Path) -> int:
    """Write the pool, one text per line, UTF-8, trailing newline. Returns the line count."""
    pool = generate_pool()
    Path(path).write_text("\n".join(pool) + "\n", encoding="utf-8")
    log.info("wrote %d texts to %s", len(pool), path)
    return len(pool)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "resources" / POOL_FILE
    parser.add_argument("path", nargs="?", default=str(default))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    write_pool(args.path)


if __name__ == "__main__":
    main()
