"""Background scenes: the stuff behind the objects, how it is painted and how captions mention it.

Stuff words (wall, sky, grass, floor, sand, snow, road, water, table) are COCO-Stuff names, so a
phrase extractor that follows the ALP paper (Sec. 3.1) drops them; they are never objects here.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    name: str
    # (colour adjective or "", base colour per region top to bottom); two regions split at a horizon
    palettes: tuple[tuple[str, tuple[RGB, ...]], ...]
    # Whole sentences mentioning the stuff; "{colour}" becomes "white " or "", "{them}" a pronoun.
    sentences: tuple[str, ...]
    intro: str  # noun phrase for captions that start with the stuff: "a {colour}wall"
    locative: str  # "On the floor": introduces the objects after an intro sentence
    where: str  # "on the floor": completes pronoun sentences ("They are on the floor.")


SCENES: tuple[Scene, ...] = (
    Scene(
        "wall",
        (
            ("white", ((226, 224, 216),)),
            ("grey", ((150, 150, 148),)),
            ("yellow", ((226, 208, 138),)),
            ("", ((196, 180, 160),)),
        ),
        (
            "In the background there is a {colour}wall.",
            "In the background we can see a {colour}wall.",
            "Behind {them} there is a {colour}wall.",
        ),
        "a {colour}wall",
        "In front of the wall",
        "in front of the wall",
    ),
    Scene(
        "sky_grass",
        (("", ((150, 192, 235), (92, 150, 64))),),
        (
            "In the background we can see the sky.",
            "In the background there is grass and the sky.",
            "At the bottom we can see the grass.",
        ),
        "the grass and the sky",
        "On the grass",
        "on the grass",
    ),
    Scene(
        "floor",
        (("brown", ((150, 104, 62),)), ("", ((176, 140, 100),))),
        (
            "In the background we can see the {colour}floor.",
            "At the bottom there is a wooden floor.",
        ),
        "a wooden floor",
        "On the floor",
        "on the floor",
    ),
    Scene(
        "sand",
        (("", ((222, 200, 150),)),),
        ("In the background there is sand.", "We can see the sand in the background."),
        "the sand",
        "On the sand",
        "on the sand",
    ),
    Scene(
        "snow",
        (("white", ((234, 239, 248),)),),
        ("In the background we can see the {colour}snow.", "Behind {them} there is snow."),
        "the snow",
        "On the snow",
        "on the snow",
    ),
    Scene(
        "road",
        (("grey", ((96, 96, 100),)), ("black", ((54, 54, 58),))),
        ("In the background there is a road.", "We can see a {colour}road in the background."),
        "a road",
        "On the road",
        "on the road",
    ),
    Scene(
        "water",
        (("blue", ((58, 108, 170),)),),
        ("In the background we can see the water.", "Behind {them} there is {colour}water."),
        "the water",
        "On the water",
        "on the water",
    ),
    Scene(
        "table",
        (("brown", ((134, 88, 52),)), ("white", ((232, 230, 226),))),
        ("In the background there is a {colour}table.", "{They_are} on a {colour}table."),
        "a {colour}table",
        "On the table",
        "on the table",
    ),
)

SCENE_BY_NAME: dict[str, Scene] = {s.name: s for s in SCENES}


def fill_stuff(template: str, colour_word: str, n_objects: int) -> str:
    """Fill a scene sentence: colour adjective (if any) and pronouns that agree with the count."""
    many = n_objects > 1
    return (
        template.replace("{colour}", f"{colour_word} " if colour_word else "")
        .replace("{them}", "them" if many else "it")
        .replace("{They_are}", "They are" if many else "It is")
    )
