"""The real-data benchmark set: Debian's Tux Paint stamps with their Chinese descriptions.

Why this set: every other measurement in the project used images and captions the project renders itself, which hides
defects (the demo's captions are compositional and its images are clean). Debian's `tuxpaint-stamps-default` package
ships ~800 PNG stamps (animals, food, vehicles, symbols ...) drawn by many people, each with a `.txt` file of
descriptions in many languages, written by translators, not by us: `zh_CN.utf8=` (simplified) and `zh_TW.utf8=`
(traditional) lines give a Chinese image-text set. It is small enough to train on a CPU in minutes and varied enough
that a model which does not learn shows it.

What `build_real_data` does, deterministically:

1. fetch the package with `apt-get download` (or take a given `.deb`) and unpack it with `dpkg -x` into a scratch
   folder — no other network, nothing outside the cache is written;
2. keep every stamp that has a PNG and a `zh_CN` description (SVG-only stamps and stamps without Chinese are
   counted and skipped); the simplified description is the caption, the traditional one (when it differs) a second
   caption of the same image;
3. composite each PNG on white, pad it to a square and shrink it to `image_size` px (a derived file, stored in the
   cache only; the repository never holds the images or captions);
4. split by the stamp's category folder (e.g. `animals/birds`): whole folders go to the evaluation side, so stamps
   that are near-duplicates of each other (the coins of one set, the birds of one artist) never straddle the split;
   folders are ordered by a hash of their path and taken until `eval_fraction` of the images are held out;
5. write `train/` and `eval/` image folders with `metadata.jsonl` (`file_name`, `text`, `captions`, `label` = the
   Chinese name of the top-level category, for zero-shot classification), the layout `hf-vlp pretrain --train-dir`
   and `load_dataset("imagefolder")` read.

Usage: `python benchmarks/real_data.py` prints the folder (building it on first use) and its statistics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


__all__ = ["CATEGORY_NAMES_ZH", "PACKAGE", "RealDataSet", "build_real_data", "default_cache_dir", "parse_stamp_text"]

PACKAGE = "tuxpaint-stamps-default"
STAMPS_SUBDIR = Path("usr/share/tuxpaint/stamps")
FORMAT_VERSION = 1
# Chinese names of the package's top-level stamp folders: the zero-shot classes of the evaluation set.
CATEGORY_NAMES_ZH = {
    "animals": "动物",
    "clothes": "衣服",
    "food": "食物",
    "hobbies": "爱好",
    "household": "家居用品",
    "medical": "医疗",
    "military": "军事",
    "naturalforces": "自然现象",
    "people": "人物",
    "plants": "植物",
    "seasonal": "节日",
    "space": "太空",
    "sports": "运动",
    "symbols": "符号",
    "town": "城镇",
    "vehicles": "交通工具",
}


@dataclass(frozen=True)
class RealDataSet:
    """Where the built set lives, and what went into it."""

    root: Path
    stats: dict

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_VLP_CACHE", Path.home() / ".cache" / "hf_vlp"))


def parse_stamp_text(text: str) -> dict[str, str]:
    """The descriptions of one stamp's `.txt`: `{"en": first line, "zh_CN.utf8": ..., ...}`.

    The first line is the English description; the others are `locale=description`.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    descriptions = {"en": lines[0]}
    for line in lines[1:]:
        locale, sep, value = line.partition("=")
        if sep and value.strip():
            descriptions[locale.strip()] = value.strip()
    return descriptions


def _fetch_package(scratch: Path, deb: str | None) -> Path:
    """The package unpacked under `scratch`; `deb` skips the download."""
    if deb is None:
        result = subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=scratch, capture_output=True, text=True, check=False
        )
        if result.returncode != 0 and os.geteuid() == 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            result = subprocess.run(
                ["apt-get", "download", PACKAGE], cwd=scratch, capture_output=True, text=True, check=False
            )
        debs = sorted(scratch.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise SystemExit(
                f"real_data: `apt-get download {PACKAGE}` failed ({result.stderr.strip().splitlines()[-1:]}); "
                "run `apt-get update` once, or pass --deb PATH to a downloaded package"
            )
        deb = str(debs[0])
    unpacked = scratch / "unpacked"
    subprocess.run(["dpkg", "-x", deb, str(unpacked)], check=True)
    return unpacked / STAMPS_SUBDIR


def _square_thumbnail(source: Path, target: Path, image_size: int) -> None:
    """The stamp on white, padded to a square (stamps are objects of any aspect ratio), `image_size` px wide."""
    from PIL import Image

    with Image.open(source) as image:
        rgba = image.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    canvas.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC).save(target, format="PNG")


def _collect_stamps(stamps_root: Path) -> tuple[list[dict], dict]:
    """Every usable stamp (PNG + zh_CN description), sorted by path; counts of what was skipped."""
    stamps, skipped = [], {"no_png": 0, "no_chinese": 0}
    for text_file in sorted(stamps_root.rglob("*.txt")):
        png = text_file.with_suffix(".png")
        if not png.is_file():
            skipped["no_png"] += 1
            continue
        descriptions = parse_stamp_text(text_file.read_text(encoding="utf-8", errors="replace"))
        simplified = descriptions.get("zh_CN.utf8")
        if not simplified:
            skipped["no_chinese"] += 1
            continue
        traditional = descriptions.get("zh_TW.utf8")
        relative = png.relative_to(stamps_root)
        stamps.append(
            {
                "png": png,
                "folder": relative.parent.as_posix(),
                "name": relative.with_suffix("").as_posix(),
                "captions": [simplified] + ([traditional] if traditional and traditional != simplified else []),
                "label": CATEGORY_NAMES_ZH.get(relative.parts[0], relative.parts[0]),
            }
        )
    return stamps, skipped


def _eval_folders(stamps: list[dict], eval_fraction: float) -> set[str]:
    """Whole category folders, in hash order, until `eval_fraction` of the stamps are held out."""
    sizes: dict[str, int] = {}
    for stamp in stamps:
        sizes[stamp["folder"]] = sizes.get(stamp["folder"], 0) + 1
    order = sorted(sizes, key=lambda folder: hashlib.sha256(folder.encode()).hexdigest())
    held, target = set(), eval_fraction * len(stamps)
    for folder in order:
        if sum(sizes[f] for f in held) >= target:
            break
        held.add(folder)
    return held


def _write_split(stamps: list[dict], folder: Path, image_size: int) -> None:
    folder.mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for stamp in stamps:
            file_name = stamp["name"].replace("/", "__") + ".png"
            _square_thumbnail(stamp["png"], folder / file_name, image_size)
            record = {
                "file_name": file_name,
                "text": stamp["captions"][0],
                "captions": stamp["captions"],
                "label": stamp["label"],
                "category": stamp["folder"],
            }
            metadata.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_real_data(
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 96,
    eval_fraction: float = 0.2,
    deb: str | None = None,
) -> RealDataSet:
    """The Tux Paint Chinese set under the cache, built on first use (atomically: a staging folder renamed)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"tuxpaint-zh-v{FORMAT_VERSION}-{image_size}px-eval{int(eval_fraction * 100)}"
    stats_file = root / "stats.json"
    if stats_file.is_file():
        return RealDataSet(root, json.loads(stats_file.read_text(encoding="utf-8")))
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=cache))
    try:
        stamps_root = _fetch_package(staging, deb)
        stamps, skipped = _collect_stamps(stamps_root)
        held = _eval_folders(stamps, eval_fraction)
        train = [s for s in stamps if s["folder"] not in held]
        evaluation = [s for s in stamps if s["folder"] in held]
        _write_split(train, staging / "build" / "train", image_size)
        _write_split(evaluation, staging / "build" / "eval", image_size)
        stats = {
            "package": PACKAGE,
            "image_size": image_size,
            "train_images": len(train),
            "eval_images": len(evaluation),
            "train_folders": len({s["folder"] for s in train}),
            "eval_folders": len(held),
            "eval_captions": sum(len(s["captions"]) for s in evaluation),
            "skipped": skipped,
        }
        (staging / "build" / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
        try:
            (staging / "build").rename(root)
        except OSError:  # another process built it first: keep theirs
            if not stats_file.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RealDataSet(root, json.loads(stats_file.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="default: $HF_VLP_CACHE or ~/.cache/hf_vlp")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--deb", default=None, help="a downloaded tuxpaint-stamps-default .deb (skips apt-get)")
    args = parser.parse_args(argv)
    dataset = build_real_data(args.cache_dir, args.image_size, args.eval_fraction, args.deb)
    print(dataset.root)
    print(json.dumps(dataset.stats, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
