"""The vocabulary of the built-in demo scenes: shape names and colour names with their RGB values.

Why on the model side: the training side renders the demo data set from these (`trainers.data.demo`), and the Space
(which uses `hf_vlp`'s public API only) draws its fallback gallery from the same table, so that the demo model knows
every word of the gallery's captions. One table, imported by both.
"""

from __future__ import annotations


__all__ = ["DEMO_COLOURS", "DEMO_SHAPES"]

DEMO_SHAPES = ("圆形", "正方形", "三角形", "星形")
#: Chinese colour name -> RGB; far apart in RGB so colour is learnable from 64px pixels in both demo domains.
DEMO_COLOURS: dict[str, tuple[int, int, int]] = {
    "红色": (220, 40, 40),
    "绿色": (40, 170, 60),
    "蓝色": (40, 80, 225),
    "黄色": (240, 205, 30),
    "紫色": (150, 60, 190),
}
