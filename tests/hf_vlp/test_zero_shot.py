"""Zero-shot template ensembles (Chinese-CLIP / ELEVATER protocol): class/template files, the imagenet-zh preset,
the ensemble scores, the pipeline with a list of templates, `evaluate()` and `hf-vlp evaluate` with the files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import pipeline

from hf_vlp import cn_clip_assets
from hf_vlp.cn_clip_assets import CnClipNotInstalledError
from hf_vlp.retrieval import zero_shot_accuracy
from hf_vlp.zero_shot import (
    TemplateEnsembleZeroShotPipeline,
    ZeroShotFileError,
    class_prompts,
    load_class_names,
    load_templates,
    resolve_zero_shot_protocol,
    template_ensemble_scores,
    zero_shot_preset,
)
from tests.trainers.helpers import small_model, training_args


CLASSES = ["红色的圆形", "蓝色的三角形", "绿色的正方形", "黄色的星形", "黑色的线条", "白色的背景", "紫色的圆环"]
TEMPLATES = ["一张{}的照片。", "{}的特写照片。", "一幅{}的画。"]
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 220, 20), (0, 0, 0), (255, 255, 255), (150, 0, 150)]


def _encode(model, processor, texts, images):
    model.eval()
    with torch.no_grad():
        return (
            model.encode_image(processor(images=images)["pixel_values"]),
            model.encode_text(**processor(text=texts, padding="longest")),
        )


# ------------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("classes.json", json.dumps(CLASSES, ensure_ascii=False)),
        ("classes.json", json.dumps({"classes": CLASSES}, ensure_ascii=False)),
        ("classes.txt", "\ufeff" + "\n".join(CLASSES) + "\n\n"),
    ],
)
def test_class_names_from_json_and_txt(tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert load_class_names(tmp_path / name) == CLASSES


@pytest.mark.parametrize(
    ("loader", "content", "message"),
    [
        (load_class_names, "[1, 2]", "JSON list of strings"),
        (load_class_names, "{not json", "not valid JSON"),
        (load_class_names, '["猫", "狗", "猫"]', "repeats class names"),
        (load_templates, '["一张照片", "{}的照片"]', "exactly one '{}'"),
        (load_templates, "[]", "holds no templates"),
    ],
)
def test_unusable_files_are_refused_with_the_reason(tmp_path, loader, content, message):
    (tmp_path / "file.json").write_text(content, encoding="utf-8")
    with pytest.raises(ZeroShotFileError, match=message):
        loader(tmp_path / "file.json")
    with pytest.raises(ZeroShotFileError, match="does not exist"):
        loader(tmp_path / "missing.txt")


def test_imagenet_zh_preset_reads_cn_clip(tmp_path):
    pytest.importorskip("cn_clip", reason="cn-clip is not installed (pip install --no-deps cn-clip==1.6.0)")
    from cn_clip.eval import imagenet_zeroshot_templates as reference

    names, templates = zero_shot_preset("imagenet-zh")
    assert names == reference.imagenet_classnames and len(names) == 1000
    assert [t.format("猫") for t in templates] == [t("猫") for t in reference.openai_imagenet_template]
    # a templates file overrides the preset's templates, its class names stay
    (tmp_path / "templates.txt").write_text("{}的照片", encoding="utf-8")
    assert resolve_zero_shot_protocol(None, tmp_path / "templates.txt", "imagenet-zh") == (names, ["{}的照片"])


def test_preset_without_cn_clip_names_the_install_command(monkeypatch):
    monkeypatch.setattr(cn_clip_assets, "_installed_root", lambda: None)
    with pytest.raises(CnClipNotInstalledError, match="pip install --no-deps cn-clip"):
        zero_shot_preset("imagenet-zh")
    with pytest.raises(ValueError, match="imagenet-zh"):
        zero_shot_preset("imagenet-en")


# ------------------------------------------------------------------------------------------------ scores
def test_ensemble_is_the_normalised_mean_of_normalised_template_embeddings(small_processor):
    model = small_model(seed=2)
    images = [Image.new("RGB", (32, 32), colour) for colour in COLOURS[:3]]
    image, text = _encode(model, small_processor, class_prompts(CLASSES, TEMPLATES), images)
    scores = template_ensemble_scores(model, image, text, len(TEMPLATES))

    with torch.no_grad():  # Chinese-CLIP's zero_shot_classifier, class by class
        raw = model.get_text_features(**small_processor(text=class_prompts(CLASSES, TEMPLATES), padding="longest"))
        raw = raw.pooler_output
    per_class = []
    for c in range(len(CLASSES)):
        embeddings = raw[c * len(TEMPLATES) : (c + 1) * len(TEMPLATES)]
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(dim=0)
        per_class.append(mean / mean.norm())
    expected = image.embeds @ torch.stack(per_class).t()
    torch.testing.assert_close(scores, expected)
    # one template: exactly the plain similarity
    image, text = _encode(model, small_processor, class_prompts(CLASSES, TEMPLATES[0]), images)
    torch.testing.assert_close(template_ensemble_scores(model, image, text, 1), model.similarity(image, text)[0])


def test_token_wise_models_average_the_template_similarities(small_processor):
    model = small_model(seed=2, similarity="token_wise")
    images = [Image.new("RGB", (32, 32), colour) for colour in COLOURS[:2]]
    image, text = _encode(model, small_processor, class_prompts(CLASSES[:4], TEMPLATES), images)
    scores = template_ensemble_scores(model, image, text, len(TEMPLATES))
    similarity = model.similarity(image, text)[0]
    torch.testing.assert_close(scores[:, 1], similarity[:, 3:6].mean(dim=1))


# ------------------------------------------------------------------------------------------------ pipeline
def test_pipeline_accepts_a_list_of_templates(tmp_path, small_processor):
    model = small_model(seed=5).eval()
    model.save_pretrained(tmp_path)
    small_processor.save_pretrained(tmp_path)
    classifier = pipeline(
        "zero-shot-image-classification", model=str(tmp_path), pipeline_class=TemplateEnsembleZeroShotPipeline
    )
    image = Image.new("RGB", (32, 32), COLOURS[1])
    result = classifier(image, candidate_labels=CLASSES[:4], hypothesis_template=TEMPLATES)

    encoded_image, text = _encode(model, small_processor, class_prompts(CLASSES[:4], TEMPLATES), [image])
    with torch.no_grad():
        logits = model.get_logit_scale() * template_ensemble_scores(model, encoded_image, text, len(TEMPLATES))
    expected = dict(zip(CLASSES[:4], logits.softmax(dim=-1)[0].tolist()))
    assert {item["label"]: pytest.approx(item["score"], abs=1e-5) for item in result} == expected

    stock = pipeline("zero-shot-image-classification", model=str(tmp_path))
    single = {
        i["label"]: i["score"] for i in classifier(image, candidate_labels=CLASSES, hypothesis_template=TEMPLATES[0])
    }
    for item in stock(image, candidate_labels=CLASSES, hypothesis_template=TEMPLATES[0]):
        assert single[item["label"]] == pytest.approx(item["score"], abs=1e-5)


# ------------------------------------------------------------------------------------------------ evaluate
def _labelled_records(count: int = 14):
    return [
        {"image": Image.new("RGB", (32, 32), COLOURS[i % len(COLOURS)]), "text": [CLASSES[i % 7]], "label": i % 7}
        for i in range(count)
    ]


def test_evaluate_reports_top1_top5_of_the_ensemble(tmp_path, small_processor):
    from trainers import VLPTrainer, build_zero_shot_set

    records = _labelled_records()
    zero_shot = build_zero_shot_set(records, "label", CLASSES, TEMPLATES)
    assert zero_shot.labels == [i % 7 for i in range(14)] and zero_shot.class_names == CLASSES
    model = small_model(seed=6)
    trainer = VLPTrainer(model=model, args=training_args(tmp_path), processing_class=small_processor)
    metrics = trainer.evaluate(zero_shot)

    image, text = _encode(model, small_processor, class_prompts(CLASSES, TEMPLATES), zero_shot.images)
    expected = zero_shot_accuracy(template_ensemble_scores(model, image, text, 3), zero_shot.labels, ks=(1, 5))
    assert metrics["eval_zero_shot_top1"] == pytest.approx(expected["top1"])
    assert metrics["eval_zero_shot_top5"] == pytest.approx(expected["top5"])


def test_labels_must_name_or_index_a_class():
    from trainers import build_zero_shot_set

    records = [{"image": None, "label": "猫"}, {"image": None, "label": "9"}]
    with pytest.raises(ValueError, match="'9' is neither one of the 2 class names"):
        build_zero_shot_set(records, "label", ["猫", "狗"])


def test_evaluate_command_with_class_and_template_files(tmp_path, small_processor):
    from trainers.cli import main

    model_dir, data = tmp_path / "model", tmp_path / "eval"
    small_model(seed=6).save_pretrained(model_dir)
    small_processor.save_pretrained(model_dir)
    data.mkdir()
    lines = []
    for index, record in enumerate(_labelled_records()):
        record["image"].save(data / f"{index}.png")
        lines.append(json.dumps({"file_name": f"{index}.png", "text": record["text"][0], "label": record["label"]}))
    (data / "metadata.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES), encoding="utf-8")
    (tmp_path / "templates.json").write_text(json.dumps(TEMPLATES, ensure_ascii=False), encoding="utf-8")
    argv = ["evaluate", "--model", str(model_dir), "--eval_dir", str(data), "--output_dir", str(tmp_path / "out")]
    files = [
        "--zero_shot_classes",
        str(tmp_path / "classes.txt"),
        "--zero_shot_templates",
        str(tmp_path / "templates.json"),
    ]
    assert main([*argv, *files]) == 0
    metrics = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {"eval_zero_shot_top1", "eval_zero_shot_top5", "eval_mean_recall"} <= set(metrics)
