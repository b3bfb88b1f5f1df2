"""A short CPU pre-training run of the tiny fusion encoder on rendered shapes: ITM learns to match held-out pairs
and cross-encoder re-ranking recovers what a coarse contrastive index ranks wrong."""

import itertools
import random

import pytest
import torch
from PIL import Image, ImageDraw

from hf_vlp import FusionEncoderConfig, FusionEncoderForPreTraining, FusionRetrievalEmbeddings, build_chinese_tokenizer
from hf_vlp.models import VLPImageProcessor
from hf_vlp.retrieval import retrieval_recall, retrieval_recall_from_topk


SIZE = 32
COLOURS = {
    "红": (220, 30, 30),
    "绿": (30, 160, 30),
    "蓝": (30, 60, 220),
    "黄": (230, 200, 20),
    "紫": (150, 40, 200),
    "白": (240, 240, 240),
}
NAMES = list(COLOURS)
PAIRS = list(itertools.combinations(range(len(NAMES)), 2))  # 15 scenes: two shapes of two colours


def render(pair: tuple[int, int], rng: random.Random) -> Image.Image:
    """Two shapes (random kind, size, height and side) of the pair's colours on black."""
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    sides = [SIZE // 4, 3 * SIZE // 4]
    rng.shuffle(sides)
    for colour, x in zip(pair, sides):
        x, y, r = x + rng.randint(-2, 2), SIZE // 2 + rng.randint(-8, 8), rng.randint(5, 7)
        fill = COLOURS[NAMES[colour]]
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif kind == 1:
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return image


def caption(pair: tuple[int, int]) -> str:
    return f"图里有{NAMES[pair[0]]}色和{NAMES[pair[1]]}色"


class Scenes:
    def __init__(self):
        self.tokenizer = build_chinese_tokenizer()
        self.processor = VLPImageProcessor(size={"height": SIZE, "width": SIZE})

    def texts(self, scenes: list[int]) -> dict[str, torch.Tensor]:
        return self.tokenizer([caption(PAIRS[i]) for i in scenes], padding=True, return_tensors="pt")

    def images(self, scenes: list[int], rng: random.Random) -> torch.Tensor:
        return self.processor([render(PAIRS[i], rng) for i in scenes], return_tensors="pt")["pixel_values"]


def compressed(embeddings: FusionRetrievalEmbeddings, projection: torch.Tensor) -> FusionRetrievalEmbeddings:
    """The same gallery item behind a coarse index: its embedding randomly projected to 2-d (an ANN-style sketch)."""
    coarse = torch.nn.functional.normalize(embeddings.embeds @ projection, dim=-1)
    return FusionRetrievalEmbeddings(**{**embeddings, "embeds": coarse})


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_short_run_learns_itm_and_reranking_beats_the_coarse_contrastive_ranking(one_thread):
    torch.manual_seed(0)
    rng = random.Random(0)
    scenes = Scenes()
    vision = {**FusionEncoderConfig.from_preset("tiny-fusion").vision_config.to_dict(), "image_size": SIZE}
    config = FusionEncoderConfig.from_preset(
        "tiny-fusion", vision_config=vision, use_momentum_encoder=False, queue_size=0, mlm_weight=0.0
    )
    model = FusionEncoderForPreTraining(config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    steps, warm_up = 300, 150
    for step in range(steps):
        # A cross encoder trained from scratch first needs easy (uniformly drawn) negatives, then hard ones.
        model.config.itm_negative_scale = 0.0 if step < warm_up else None
        chosen = [rng.randrange(len(PAIRS)) for _ in range(24)]
        out = model(**scenes.texts(chosen), pixel_values=scenes.images(chosen, rng))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    # Held-out renderings: 2 images per scene, one caption per scene.
    model.eval()
    eval_rng = random.Random(1)
    image_scenes = list(range(len(PAIRS))) * 2
    text_inputs = scenes.texts(list(range(len(PAIRS))))
    pixel_values = scenes.images(image_scenes, eval_rng)
    with torch.no_grad():
        images = model.encode_image(pixel_values)
        texts = model.encode_text(text_inputs["input_ids"], text_inputs["attention_mask"])
        truth = torch.tensor(image_scenes)
        wrong = (truth + 1 + torch.arange(len(image_scenes)) % (len(PAIRS) - 1)) % len(PAIRS)  # never the truth
        positive = model.rerank_scores(images, texts.select(truth))
        negative = model.rerank_scores(images, texts.select(wrong))
    itm_accuracy = ((positive > 0).float().mean() + (negative < 0).float().mean()).item() / 2
    assert itm_accuracy >= 0.85, itm_accuracy  # chance: 0.5

    img2txt = [[scene] for scene in image_scenes]
    txt2img = [[i for i, scene in enumerate(image_scenes) if scene == t] for t in range(len(PAIRS))]
    projection = torch.randn(images.embeds.shape[1], 2, generator=torch.Generator().manual_seed(0))
    coarse_images, coarse_texts = compressed(images, projection), compressed(texts, projection)
    with torch.no_grad():
        sim = model.similarity(coarse_images, coarse_texts)[0]
        _, i2t = model.rank(coarse_images, coarse_texts, query_modality="image", k=5, combine="cross")
        _, t2i = model.rank(coarse_texts, coarse_images, query_modality="text", k=10, combine="cross")
    contrastive = retrieval_recall(sim, img2txt, txt2img, ks=(1,))
    reranked = retrieval_recall_from_topk(i2t, t2i, img2txt, txt2img, ks=(1,))
    assert reranked["mean_recall"] > contrastive["mean_recall"], (reranked, contrastive)
