"""The Space's built-in gallery: simple shape scenes with Chinese captions, drawn with PIL in a few milliseconds.

Why it lives here: the Space depends on `hf_vlp` only, and the demo data generator of the training side
(`trainers.data`) is not installed on a Space that pins `hf-vlp` for inference. When the main job's eval folder is
present the app shows that instead (same kind of scenes, the distribution the demo model was trained on); this
fallback only has to give a meaningful gallery with no files at all. Its colours and shapes are the demo data set's
(one table, `hf_vlp.demo_scenes`), so that the demo model knows every word of these captions.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from hf_vlp.demo_scenes import DEMO_COLOURS, DEMO_SHAPES


__all__ = ["demo_caption", "demo_gallery", "render_scene"]

_BACKGROUND = (245, 245, 240)


def demo_caption(colour: str, shape: str) -> str:
    """The caption of a one-shape scene, e.g. `一个红色的圆形`."""
    return f"一个{colour}的{shape}"


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "正方形":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "三角形":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "星形":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(DEMO_SHAPES)}")


def render_scene(colour: str, shape: str, size: int = 128, rng: random.Random | None = None) -> Image.Image:
    """One shape of one colour on a light background; `rng` jitters position and size (None: centred)."""
    image = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    radius = size * 0.3
    cx = cy = size / 2
    if rng is not None:
        radius *= rng.uniform(0.75, 1.1)
        slack = size / 2 - radius - 2
        cx += rng.uniform(-slack, slack)
        cy += rng.uniform(-slack, slack)
    fill = DEMO_COLOURS[colour]
    if shape == "圆形":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, radius), fill=fill)
    return image


def demo_gallery(
    variants: int = 1, size: int = 128, seed: int = 0, colours: list[str] | None = None
) -> list[tuple[Image.Image, str]]:
    """`(image, caption)` for every colour x shape, `variants` scenes each (the first centred, the rest jittered).

    Deterministic for a given `seed`. `variants` scales the gallery (20 scenes per variant) to try large galleries.
    """
    rng = random.Random(seed)
    items = []
    for variant in range(variants):
        for colour in colours or list(DEMO_COLOURS):
            for shape in DEMO_SHAPES:
                image = render_scene(colour, shape, size, rng if variant else None)
                items.append((image, demo_caption(colour, shape)))
    return items
