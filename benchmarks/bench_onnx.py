"""Benchmark: the exported ONNX encoders on ONNX Runtime vs the same model's `encode_image` / `encode_text` in PyTorch.

At ViT-B/16 + BERT-base size (Chinese-CLIP base: 224 px images, 52-token texts; random weights, the speed does not
depend on them) on CPU, batch 1 (a search query) and batch 32 (indexing), in the same run: latency per call and
throughput, interleaved round by round (`benchmarks.common.interleaved_rates`), and the ratio ORT / PyTorch. Both
use the same number of threads (`--threads`) and get the same preprocessed tensors, so only the encoder is timed.

With `--recall-model` it also reports what dynamic int8 quantisation costs in quality: text-image Recall@1/5/10 of the
model on the demo evaluation set through PyTorch, the float32 graphs and the int8 graphs.

    python benchmarks/bench_onnx.py                      # base size, batch 1 and 32
    python benchmarks/bench_onnx.py --smoke              # tiny preset, seconds
    python benchmarks/bench_onnx.py --skip-speed --recall-model hf_vlp_demo_output/model \\
        --demo-dir ~/.cache/hf_vlp/demo-2000-200-64px-seed0/eval
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def _base_model():
    """Chinese-CLIP ViT-B/16 shapes: a ViT-B/16 vision tower and a BERT-base (Chinese vocab) text tower."""
    import torch

    from hf_vlp import DualEncoderConfig, DualEncoderModel

    torch.manual_seed(0)
    text = {"model_type": "bert", "vocab_size": 21128, "max_position_embeddings": 512}
    vision = {"model_type": "clip_vision_model", "image_size": 224, "patch_size": 16}
    config = DualEncoderConfig(text_config=text, vision_config=vision, projection_dim=512)
    return DualEncoderModel(config).eval()


def _tiny_model():
    import torch

    import hf_vlp

    torch.manual_seed(0)
    return hf_vlp.create_model("tiny").eval()


def _processor(image_size: int, max_length: int):
    from hf_vlp import VLPImageProcessor, VLPProcessor, build_chinese_tokenizer

    return VLPProcessor(
        VLPImageProcessor(size={"height": image_size, "width": image_size}), build_chinese_tokenizer(), max_length
    )


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def speed(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from hf_vlp.export import export_onnx

    model = _tiny_model() if args.smoke else _base_model()
    image_size = model.config.vision_config.image_size
    processor = _processor(image_size, args.text_length)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp, common.torch_threads(args.threads):
        start = time.perf_counter()
        export = export_onnx(model, tmp, processor)
        export_seconds = time.perf_counter() - start
        sessions = {
            "image": _session(export.image_encoder, args.threads),
            "text": _session(export.text_encoder, args.threads),
        }
        generator = torch.Generator().manual_seed(0)
        for batch in args.batch_sizes:
            pixels = torch.randn(batch, 3, image_size, image_size, generator=generator)
            ids = torch.randint(
                100, model.config.text_config.vocab_size, (batch, args.text_length), generator=generator
            )
            mask = torch.ones_like(ids)
            feeds = {
                "image": {"pixel_values": pixels.numpy()},
                "text": {"input_ids": ids.numpy(), "attention_mask": mask.numpy()},
            }
            torch_calls = {
                "image": lambda p=pixels: model.encode_image(p),
                "text": lambda i=ids, m=mask: model.encode_text(input_ids=i, attention_mask=m),
            }
            for tower in ("image", "text"):
                with torch.inference_mode():
                    reference = torch_calls[tower]().embeds.numpy()
                    got = sessions[tower].run(["embeds"], feeds[tower])[0]
                    max_diff = float(np.abs(got - reference).max())

                    def run_torch(call=torch_calls[tower], n=batch):
                        call()
                        return n

                    def run_ort(session=sessions[tower], feed=feeds[tower], n=batch):
                        session.run(["embeds"], feed)
                        return n

                    run_torch(), run_ort()  # warm-up
                    summary = common.interleaved_rates(
                        {"pytorch": run_torch, "onnxruntime": run_ort}, args.rounds, reference="pytorch"
                    )
                key = f"{tower}_batch{batch}"
                results[key] = {**summary, "max_abs_diff": max_diff}
                torch_rate, ort_rate = summary["pytorch"]["median"], summary["onnxruntime"]["median"]
                rows.append(
                    [
                        tower,
                        batch,
                        f"{1000 * batch / torch_rate:.1f}",
                        f"{1000 * batch / ort_rate:.1f}",
                        f"{torch_rate:.1f}",
                        f"{ort_rate:.1f}",
                        common.fmt_ratio(summary["onnxruntime"]["ratio_to_reference"]),
                        f"{max_diff:.1e}",
                    ]
                )
    common.print_table(
        f"ORT vs PyTorch, {'tiny' if args.smoke else 'ViT-B/16 + BERT-base'}, {args.threads} thread(s), text length "
        f"{args.text_length}, median of {args.rounds} interleaved rounds",
        ["tower", "batch", "torch ms/call", "ORT ms/call", "torch items/s", "ORT items/s", "ORT/torch", "max |diff|"],
        rows,
    )
    return {"export_seconds": export_seconds, "results": results}


def recall(args: argparse.Namespace) -> dict[str, Any]:
    """Recall@K on the demo eval set: PyTorch vs the float32 and int8 graphs (same preprocessing)."""
    import numpy as np
    import torch

    from hf_vlp.export import export_onnx
    from hf_vlp.index import load_model_and_processor
    from hf_vlp.retrieval import retrieval_recall

    folder = Path(args.demo_dir).expanduser()
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    images = [str(folder / row["file_name"]) for row in rows]
    captions = [row.get("captions") or [row["text"]] for row in rows]
    texts = [c for caps in captions for c in caps]
    img2txt, txt2img, start = [], [], 0
    for image_index, caps in enumerate(captions):
        img2txt.append(list(range(start, start + len(caps))))
        txt2img.extend([image_index] * len(caps))
        start += len(caps)

    model, processor = load_model_and_processor(args.recall_model)
    pixels = processor(images=images)["pixel_values"]
    tokens = processor(text=texts)
    report: dict[str, Any] = {"model": args.recall_model, "images": len(images), "texts": len(texts)}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        export = export_onnx(model, tmp, processor, quantize="int8")
        variants = {"pytorch": None, "onnx_fp32": ("image_encoder.onnx", "text_encoder.onnx")}
        variants["onnx_int8"] = (
            export.config["quantized"]["image_encoder"],
            export.config["quantized"]["text_encoder"],
        )
        table = []
        for name, files in variants.items():
            if files is None:
                image_emb = model.encode_image(pixels).embeds.numpy()
                text_emb = model.encode_text(tokens["input_ids"], tokens["attention_mask"]).embeds.numpy()
            else:
                image_emb = _session(Path(tmp) / files[0], args.threads).run(
                    ["embeds"], {"pixel_values": pixels.numpy()}
                )[0]
                text_emb = _session(Path(tmp) / files[1], args.threads).run(
                    ["embeds"],
                    {"input_ids": tokens["input_ids"].numpy(), "attention_mask": tokens["attention_mask"].numpy()},
                )[0]
            metrics = retrieval_recall(torch.from_numpy(np.asarray(image_emb @ text_emb.T)), img2txt, txt2img)
            sizes = sum((Path(tmp) / f).stat().st_size for f in files) if files else None
            report[name] = {**metrics, "graph_bytes": sizes}
            table.append(
                [name]
                + [f"{metrics[k]:.1f}" for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "mean_recall")]
                + [f"{sizes / 2**20:.2f} MiB" if sizes else "-"]
            )
    common.print_table(
        f"Quality of the exported graphs on the demo eval set ({len(images)} images, {len(texts)} captions)",
        ["variant", "t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1", "mean recall", "graph size"],
        table,
    )
    report["mean_recall_change_int8"] = report["onnx_int8"]["mean_recall"] - report["pytorch"]["mean_recall"]
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny preset, one round: a CI check that it runs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--text-length", type=int, default=52)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--recall-model", default=None, help="saved model for the int8 quality check")
    parser.add_argument("--demo-dir", default=None, help="imagefolder with metadata.jsonl (the demo eval split)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.batch_sizes = 1, [1, 4]
    report: dict[str, Any] = {"date": common.BENCH_DATE, "machine": common.machine_info("cpu"), "args": vars(args)}
    if not args.skip_speed:
        report["speed"] = speed(args)
    if args.recall_model:
        if not args.demo_dir:
            parser.error("--recall-model needs --demo-dir")
        report["quality"] = recall(args)
    name = "onnx_smoke.json" if args.smoke else ("onnx.json" if not args.skip_speed else "onnx_quality.json")
    common.write_report(args.output or common.RESULTS_DIR / name, report)
    return report


if __name__ == "__main__":
    main()
