"""A built-in Chinese image-text data set, rendered offline and deterministically.

Scenes hold one or two groups of shapes; each group has a count, a colour, a shape and (with two groups) a
position. Captions are compositional ("左边是一个红色的圆形，右边是两个蓝色的三角形"), so a scene with colours or
positions swapped is a hard negative: a model must bind attributes to objects, not just spot them. This gives the
main job and the tests something real to learn with no download.

Two visual domains share the scene space: `"plain"` (light background, flat fill) and `"night"` (dark background,
outlined shapes, pixel noise), so one can pretrain on one and fine-tune (e.g. LoRA) on the other.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from hf_vlp.demo_scenes import DEMO_COLOURS, DEMO_SHAPES


__all__ = [
    "DEMO_COLOURS",
    "DEMO_COUNTS",
    "DEMO_DOMAINS",
    "DEMO_LAYOUTS",
    "DEMO_SHAPES",
    "DemoGroup",
    "DemoSceneSpec",
    "DemoZeroShotTask",
    "all_demo_scenes",
    "caption_variants",
    "demo_records",
    "demo_zero_shot_labels",
    "generate_demo_dataset",
    "render_scene",
]

DEMO_COUNTS = {1: "一个", 2: "两个", 3: "三个"}
# Two-group scenes put the groups on opposite sides; each pair is listed in caption order.
DEMO_LAYOUTS = (("左边", "右边"), ("上面", "下面"))
DEMO_DOMAINS = ("plain", "night")
_POSITION_ORDER = {position: index for layout in DEMO_LAYOUTS for index, position in enumerate(layout)}
# A quarter of the images are single-group scenes: few in the scene space (60 of 7140), but they are the ones a
# zero-shot classifier is evaluated on.
_SINGLE_GROUP_FRACTION = 0.25
_SUPERSAMPLE = 4  # draw at 4x and box-reduce: anti-aliased edges without an extra library

Domain = Literal["plain", "night"]


class DemoGroup(NamedTuple):
    """`count` shapes of one colour; `position` is None in a single-group scene."""

    position: str | None
    count: int
    colour: str
    shape: str


@dataclass(frozen=True)
class DemoSceneSpec:
    """A scene: one group, or two groups on opposite sides (左边/右边 or 上面/下面).

    Groups are stored in caption order (left before right, top before bottom), so two specs of the same scene
    compare equal whatever order they were written in; that is what keeps eval scenes disjoint from train scenes.
    """

    groups: tuple[DemoGroup, ...]

    def __post_init__(self) -> None:
        groups = tuple(DemoGroup(*group) for group in self.groups)
        for group in groups:
            if group.count not in DEMO_COUNTS or group.colour not in DEMO_COLOURS or group.shape not in DEMO_SHAPES:
                raise ValueError(f"Unknown count, colour or shape in {group}")
        if len(groups) == 1:
            if groups[0].position is not None:
                raise ValueError("A single-group scene has no position")
        elif len(groups) == 2:
            groups = tuple(sorted(groups, key=lambda group: _POSITION_ORDER.get(group.position, -1)))
            if (groups[0].position, groups[1].position) not in DEMO_LAYOUTS:
                raise ValueError(f"Two groups need positions {DEMO_LAYOUTS}, got {[g.position for g in groups]}")
        else:
            raise ValueError(f"A scene has 1 or 2 groups, got {len(groups)}")
        object.__setattr__(self, "groups", groups)


def _phrase(group: DemoGroup, with_de: bool = True) -> str:
    """'一个红色的圆形' (or '一个红色圆形' without 的)."""
    return f"{DEMO_COUNTS[group.count]}{group.colour}{'的' if with_de else ''}{group.shape}"


def caption_variants(spec: DemoSceneSpec) -> list[str]:
    """Paraphrases of the scene's description; the first is the canonical caption."""
    if len(spec.groups) == 1:
        phrase = _phrase(spec.groups[0])
        return [
            phrase,
            f"图中有{phrase}",
            _phrase(spec.groups[0], with_de=False),
            f"这是{phrase}",
            f"画面里是{phrase}",
        ]
    first, second = spec.groups
    a, b = _phrase(first), _phrase(second)
    return [
        f"{first.position}是{a}，{second.position}是{b}",
        f"图中{first.position}有{a}，{second.position}有{b}",
        f"{_phrase(first, False)}在{first.position}，{_phrase(second, False)}在{second.position}",
        f"{second.position}是{b}，{first.position}是{a}",
        f"这张图片的{first.position}是{a}，{second.position}是{b}",
    ]


def _region(position: str | None, size: int) -> tuple[float, float, float, float]:
    half = size / 2
    return {
        None: (0, 0, size, size),
        "左边": (0, 0, half, size),
        "右边": (half, 0, size, size),
        "上面": (0, 0, size, half),
        "下面": (0, half, size, size),
    }[position]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill, outline) -> None:
    width = _SUPERSAMPLE if outline is not None else 0
    if shape == "圆形":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill, outline=outline, width=width)
    elif shape == "正方形":
        side = radius * 0.85  # equal-ish area to the circle, so size is no cue for the shape
        draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill, outline=outline, width=width)
    elif shape == "三角形":
        points = [(cx, cy - radius), (cx + radius * 0.95, cy + radius * 0.8), (cx - radius * 0.95, cy + radius * 0.8)]
        draw.polygon(points, fill=fill, outline=outline, width=width)
    else:  # 星形
        points = [
            (
                cx + (radius if k % 2 == 0 else radius * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                cy + (radius if k % 2 == 0 else radius * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5),
            )
            for k in range(10)
        ]
        draw.polygon(points, fill=fill, outline=outline, width=width)


def render_scene(
    spec: DemoSceneSpec, image_size: int = 64, domain: Domain = "plain", seed: int | str = 0
) -> Image.Image:
    """Draw the scene as an RGB image; `seed` jitters sizes, placements and tints, so one spec gives many images.

    Each group fills its half of the image (the whole image for a single group), with its objects laid out along
    the longer side of that region.
    """
    if domain not in DEMO_DOMAINS:
        raise ValueError(f"domain must be one of {DEMO_DOMAINS}, got {domain!r}")
    rng = random.Random(seed)
    canvas = image_size * _SUPERSAMPLE
    if domain == "plain":
        background = tuple(236 + rng.randrange(12) for _ in range(3))
    else:
        background = (18 + rng.randrange(10), 18 + rng.randrange(10), 30 + rng.randrange(14))
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    for group in spec.groups:
        x0, y0, x1, y1 = _region(group.position, canvas)
        vertical = (y1 - y0) > (x1 - x0)
        long_side = ((y1 - y0) if vertical else (x1 - x0)) / group.count
        short_side = (x1 - x0) if vertical else (y1 - y0)
        cell = min(long_side, short_side, 0.45 * canvas)
        base = [int(c * (0.8 if domain == "night" else 1.0)) for c in DEMO_COLOURS[group.colour]]
        for index in range(group.count):
            radius = cell * rng.uniform(0.28, 0.36)
            slack = cell / 2 - radius
            along = (index + 0.5) * long_side + rng.uniform(-slack, slack) * 0.6
            across = short_side / 2 + rng.uniform(-slack, slack) * 0.6
            cx, cy = (x0 + across, y0 + along) if vertical else (x0 + along, y0 + across)
            fill = tuple(min(255, max(0, c + rng.randrange(-10, 11))) for c in base)
            outline = (235, 235, 235) if domain == "night" else None
            _draw_shape(draw, group.shape, cx, cy, radius, fill, outline)
    image = image.reduce(_SUPERSAMPLE)
    if domain == "night":
        pixels = np.asarray(image, dtype=np.int16)
        noise = np.random.default_rng(rng.getrandbits(64)).integers(-12, 13, size=pixels.shape, dtype=np.int16)
        image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")
    return image


def all_demo_scenes() -> tuple[list[DemoSceneSpec], list[DemoSceneSpec]]:
    """Every scene in a fixed order: (single-group scenes, two-group scenes), 60 and 7080 of them."""
    groups = [(count, colour, shape) for count in DEMO_COUNTS for colour in DEMO_COLOURS for shape in DEMO_SHAPES]
    singles = [DemoSceneSpec((DemoGroup(None, *group),)) for group in groups]
    pairs = [
        DemoSceneSpec((DemoGroup(first_position, *first), DemoGroup(second_position, *second)))
        for first_position, second_position in DEMO_LAYOUTS
        for first in groups
        for second in groups
        if first != second
    ]
    return singles, pairs


@dataclass(frozen=True)
class DemoZeroShotTask:
    """Zero-shot classification on demo images: `labels` are the class names, `label_of` the ground truth.

    Only single-group scenes have one answer; `label_of` returns None for two-group scenes (two shapes, two
    colours), and those are left out of zero-shot evaluation.
    """

    attribute: Literal["shape", "colour"]
    labels: tuple[str, ...]

    def label_of(self, spec: DemoSceneSpec) -> str | None:
        """The scene's shape (or colour) name, or None for a two-group scene."""
        if len(spec.groups) != 1:
            return None
        return getattr(spec.groups[0], self.attribute)


def demo_zero_shot_labels(attribute: Literal["shape", "colour"] = "shape") -> DemoZeroShotTask:
    """The demo's zero-shot label set: shape names (the `label` written to the metadata) or colour names."""
    if attribute == "shape":
        return DemoZeroShotTask("shape", DEMO_SHAPES)
    if attribute == "colour":
        return DemoZeroShotTask("colour", tuple(DEMO_COLOURS))
    raise ValueError(f"attribute must be 'shape' or 'colour', got {attribute!r}")


def _split_pool(
    pool: list[DemoSceneSpec], num_eval: int, num_train: int, rng: random.Random
) -> tuple[list[DemoSceneSpec], list[DemoSceneSpec]]:
    """Disjoint (eval, train) scene pools: no repeats when the pool is large enough, else a proportional split."""
    pool = list(pool)
    rng.shuffle(pool)
    if num_eval == 0:
        return [], pool
    if num_train == 0 or num_eval + num_train <= len(pool):
        held_out = min(num_eval, len(pool))
    else:
        # Both splits must repeat scenes: split in proportion, holding out at least a fifth so that the eval
        # scenes still cover a fair part of the space.
        proportional = round(len(pool) * num_eval / (num_eval + num_train))
        held_out = min(len(pool) - 1, max(1, proportional, math.ceil(len(pool) / 5)))
    return pool[:held_out], pool[held_out:]


def _draw_specs(
    singles: list[DemoSceneSpec], pairs: list[DemoSceneSpec], n: int, rng: random.Random
) -> list[DemoSceneSpec]:
    """`n` scenes, a quarter single-group, cycling through each pool (pools may be smaller than needed)."""
    num_single = round(n * _SINGLE_GROUP_FRACTION)
    specs = [singles[i % len(singles)] for i in range(num_single)]
    specs += [pairs[i % len(pairs)] for i in range(n - num_single)]
    rng.shuffle(specs)
    return specs


def _split_singles(
    singles: list[DemoSceneSpec], num_eval: int, num_train: int, rng: random.Random
) -> tuple[list[DemoSceneSpec], list[DemoSceneSpec]]:
    """Split single-group scenes per shape and interleave, so both splits cycle through every shape evenly."""
    per_shape = [[spec for spec in singles if spec.groups[0].shape == shape] for shape in DEMO_SHAPES]
    per_eval, per_train = math.ceil(num_eval / len(DEMO_SHAPES)), math.ceil(num_train / len(DEMO_SHAPES))
    splits = [_split_pool(pool, per_eval, per_train, rng) for pool in per_shape]
    eval_pool = [spec for specs in zip(*(s[0] for s in splits)) for spec in specs]
    train_pool = [spec for specs in zip(*(s[1] for s in splits)) for spec in specs]
    return eval_pool, train_pool


def _record(spec: DemoSceneSpec, image_id: str, captions_per_image: int | None) -> dict:
    return {
        "text": caption_variants(spec)[:captions_per_image],
        "image_id": image_id,
        "label": demo_zero_shot_labels().label_of(spec),
        "groups": [group._asdict() for group in spec.groups],
    }


def demo_records(
    n: int,
    seed: int = 0,
    domain: Domain = "plain",
    image_size: int = 64,
    captions_per_image: int | None = None,
) -> list[dict]:
    """`n` in-memory records `{"image": PIL, "text": [captions], "image_id", "label", "groups"}` for tests.

    `text` lists the caption variants, canonical first; `label` is the shape for single-group scenes, else None.
    """
    rng = random.Random(f"{seed}:records")
    singles, pairs = all_demo_scenes()
    shape_balanced_singles = _split_singles(singles, 0, n, rng)[1]  # nothing held out, shapes interleaved
    specs = _draw_specs(shape_balanced_singles, pairs, n, rng)
    records = []
    for index, spec in enumerate(specs):
        record = _record(spec, f"demo-{index:06d}", captions_per_image)
        record["image"] = render_scene(spec, image_size, domain, seed=f"{seed}:records:{index}")
        records.append(record)
    return records


def generate_demo_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 2000,
    num_eval: int = 200,
    image_size: int = 64,
    seed: int = 0,
    domain: Domain = "plain",
    captions_per_image: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the demo set as two `datasets` imagefolders, `output_dir/train` and `output_dir/eval`.

    Each folder holds numbered PNG files and a `metadata.jsonl` whose lines are `{"file_name", "text"
    (canonical caption), "captions" (all variants, canonical first), "image_id", "label" (shape of a single-group
    scene, else null), "groups"}`. Output is byte-identical for the same arguments. Eval scenes are disjoint from
    train scenes (a scene is the spec, not the jittered rendering) as far as the 7140-scene space allows; the
    scene split depends on `seed` only, so the two domains share it. `load_dataset("imagefolder", data_dir=...)`
    reads either split folder, or `output_dir` as a whole (where it names the eval folder the "test" split).

    Args:
        captions_per_image: keep this many variants (1 to 5); all by default.
        overwrite: replace existing split folders; otherwise a non-empty one raises `FileExistsError`.

    Returns:
        A summary: paths, sizes, arguments, and the zero-shot labels.
    """
    if domain not in DEMO_DOMAINS:
        raise ValueError(f"domain must be one of {DEMO_DOMAINS}, got {domain!r}")
    if captions_per_image is not None and not 1 <= captions_per_image <= 5:
        raise ValueError(f"captions_per_image must be between 1 and 5, got {captions_per_image}")
    rng = random.Random(f"{seed}:split")
    singles, pairs = all_demo_scenes()
    num_eval_single = round(num_eval * _SINGLE_GROUP_FRACTION)
    num_train_single = round(num_train * _SINGLE_GROUP_FRACTION)
    eval_singles, train_singles = _split_singles(singles, num_eval_single, num_train_single, rng)
    eval_pairs, train_pairs = _split_pool(pairs, num_eval - num_eval_single, num_train - num_train_single, rng)
    summary: dict = {"output_dir": os.fspath(output_dir)}
    for split, split_singles, split_pairs, count in (
        ("train", train_singles, train_pairs, num_train),
        ("eval", eval_singles, eval_pairs, num_eval),
    ):
        split_dir = os.path.join(output_dir, split)
        if os.path.isdir(split_dir) and os.listdir(split_dir):
            if not overwrite:
                raise FileExistsError(f"{split_dir} is not empty; pass overwrite=True to replace it")
            shutil.rmtree(split_dir)
        os.makedirs(split_dir, exist_ok=True)
        lines = []
        for index, spec in enumerate(_draw_specs(split_singles, split_pairs, count, rng)):
            image_id = f"{split}-{index:06d}"
            # No split name in the file name: `datasets` would infer splits from it and lose the metadata file.
            file_name = f"{index:06d}.png"
            render_scene(spec, image_size, domain, seed=f"{seed}:{split}:{index}").save(
                os.path.join(split_dir, file_name), format="PNG", compress_level=1
            )
            record = _record(spec, image_id, captions_per_image)
            line = {"file_name": file_name, "text": record["text"][0], "captions": record["text"]}
            line.update({key: record[key] for key in ("image_id", "label", "groups")})
            lines.append(json.dumps(line, ensure_ascii=False))
        with open(os.path.join(split_dir, "metadata.jsonl"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + ("\n" if lines else ""))
        summary[f"{split}_dir"] = split_dir
        summary[f"num_{split}"] = count
    task = demo_zero_shot_labels()
    summary.update(
        image_size=image_size,
        seed=seed,
        domain=domain,
        captions_per_image=captions_per_image or 5,
        zero_shot_attribute=task.attribute,
        zero_shot_labels=list(task.labels),
    )
    return summary
