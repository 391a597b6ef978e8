"""python -m eval run|score|compare|predict — see `python -m eval <command> --help`."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from functools import partial

from converters.boxes import MODEL_FAMILIES
from converters.geometry import RESIZE_PATHS
from converters.options import HelpFormatter
from converters.registry import TASK_NAMES
from eval.infer import DTYPES


def _run(args) -> None:
    from eval.run import run_eval
    metrics = run_eval(args.task, args.model, args.data, args.out, adapter=args.adapter, split=args.split,
                       limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                       device=args.device, dtype=args.dtype, min_pixels=args.min_pixels,
                       max_pixels=args.max_pixels, resize_path=args.resize_path,
                       java_metrics=not args.no_java_metrics, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in metrics.items() if k != "run"}, indent=2))


def _score(args) -> None:
    from eval.score import score_predictions
    metrics = score_predictions(args.task, args.model_family, args.predictions, args.out,
                                min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                resize_path=args.resize_path, real_word=args.real_word,
                                fake_word=args.fake_word, java_metrics=not args.no_java_metrics)
    print(json.dumps(metrics, indent=2))


def _compare(args) -> None:
    from eval.compare import compare_runs
    names = tuple(args.names) if args.names else None
    print(compare_runs(args.run_a, args.run_b, args.out, names=names, max_rows=args.max_rows,
                       max_images=args.max_images))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _predict(args) -> None:
    from eval.predict import run_predict, summary
    scores = run_predict(args.model, args.checkpoint, args.images, args.out, prompt=args.prompt,
                         batch_size=args.batch_size, device=args.device)
    print(json.dumps(summary(scores), indent=2))


def add_pixel_limits(parser: argparse.ArgumentParser, help_text: str) -> None:
    for bound in ("min", "max"):
        parser.add_argument(f"--{bound}-pixels", type=positive_int, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = partial(commands.add_parser, formatter_class=HelpFormatter)
    java = {"action": "store_true", "help": "skip METEOR/SPICE even when Java is installed (they take seconds to start)"}
    debug = {"action": "store_true", "help": "show the Python traceback of an error (otherwise one line)"}

    run = sub("run", help="generate answers for a converter split and score them",
                              description="Batched greedy generation (left padding, the model's chat template, "
                              "optional peft adapter), predictions appended to <out>/predictions.jsonl as they "
                              "come (a rerun with the same inputs resumes; <out>/run.json holds their sha256, "
                              "and changed inputs are refused by name), then <out>/metrics.json and "
                              "<out>/samples.jsonl. Model family, pixel limits and real/fake words come from "
                              "the converter's manifest.json. With a converter output dir as --data, the "
                              "split file is the one of the trainer that wrote --adapter (ms-swift: .jsonl, "
                              "LLaMA-Factory: .json), told by the files each leaves (args.json, "
                              "trainer_log.jsonl); an adapter of unknown origin is refused when both exist.",
                              formatter_class=HelpFormatter)
    run.add_argument("--task", required=True, choices=TASK_NAMES, help="what the data and the answers are")
    run.add_argument("--model", required=True, help="hub id or local checkpoint dir")
    run.add_argument("--adapter", default=None, help="peft LoRA dir: LLaMA-Factory output_dir or ms-swift output/ "
                     "(newest vX-*/checkpoint-N is used), a custom_modules.forgery checkpoint dir, scored "
                     "with its head, or a custom vision encoder's output (its vision_encoder/ beside the LoRA, if "
                     "any) (default: the base model alone)")
    run.add_argument("--data", required=True, help="converter output dir (or one <name>_<split>.json / .jsonl file)")
    run.add_argument("--split", default=None,
                     help="val | test | train (default: val if present, else test; the training rows only when "
                          "asked for with train)")
    run.add_argument("--out", required=True, help="run directory (one run writes into it at a time)")
    run.add_argument("--overwrite", action="store_true",
                     help="discard the predictions --out holds and evaluate again (without it, an --out holding "
                          "another run's predictions, other settings or changed weights, data or model config, is "
                          "refused naming what changed; the same run resumes)")
    run.add_argument("--limit", type=positive_int, default=None, help="first N samples only (default: all)")
    run.add_argument("--batch-size", type=positive_int, default=4, help="samples generated together")
    run.add_argument("--max-new-tokens", type=positive_int, default=128, help="answer length limit")
    run.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    run.add_argument("--dtype", default=None, choices=DTYPES, help="default: bfloat16 on cuda, float32 on cpu")
    add_pixel_limits(run, "override the manifest's (must match training; default: the manifest's)")
    run.add_argument("--resize-path", choices=RESIZE_PATHS,
                     help="how images are resized before the model (default: the path of the trainer the "
                          "data file was written for: .json llamafactory, .jsonl swift)")
    run.add_argument("--no-java-metrics", **java)
    run.add_argument("--debug", **debug)
    run.set_defaults(func=_run)

    score = sub("score", help="metrics from any predictions JSONL",
                description="Each line: {prediction, reference, id?, image_size? [w,h] positive integers, "
                "score? (P(fake) in [0, 1]), label? (forgery 0/1)}; a line breaking these is an error naming "
                "it. Writes <out>/metrics.json (metrics that cannot be computed are null) and "
                "<out>/samples.jsonl.")
    score.add_argument("--task", required=True, choices=TASK_NAMES, help="what the predictions answer")
    score.add_argument("--model-family", required=True, choices=MODEL_FAMILIES,
                       help="box convention of predictions and references (grounding)")
    score.add_argument("--predictions", required=True, help="the predictions JSONL")
    score.add_argument("--out", required=True, help="directory for metrics.json and samples.jsonl")
    add_pixel_limits(score, "qwen2_5_vl resize (default: the family's recipe value)")
    score.add_argument("--resize-path", default="hf", choices=RESIZE_PATHS,
                       help="qwen2_5_vl: the resize path boxes were rendered and predicted under "
                            "(llamafactory / swift for their converter files)")
    score.add_argument("--real-word", default="real", help="the answer word for a real image")
    score.add_argument("--fake-word", default="fake", help="the answer word for a fake image")
    score.add_argument("--no-java-metrics", **java)
    score.add_argument("--debug", **debug)
    score.set_defaults(func=_score)

    compare = sub("compare", help="markdown report comparing two run dirs",
                  description="Writes <out>/report.md with a metrics table, failure kinds, "
                  "per-sample disagreements and PNG plots (grounding: images with boxes).")
    compare.add_argument("run_a", help="first run directory (metrics.json + samples.jsonl)")
    compare.add_argument("run_b", help="second run directory")
    compare.add_argument("--out", required=True, help="report directory")
    compare.add_argument("--names", nargs=2, metavar=("A", "B"), default=None,
                         help="labels (default: the directory names)")
    compare.add_argument("--max-rows", type=int, default=20, help="disagreements listed")
    compare.add_argument("--max-images", type=int, default=4, help="grounding pictures drawn")
    compare.add_argument("--debug", **debug)
    compare.set_defaults(func=_compare)

    predict = sub("predict", help="forgery scores and heatmaps for unlabelled images",
                  description="Scores every image of a folder (or of a list file: one path a line) with a "
                  "custom_modules.forgery checkpoint, as `eval run --task forgery` scores it, and writes "
                  "<out>/scores.jsonl (image, p_fake, prediction, lm_answer, head_prob, lm_prob, heatmap) and "
                  "<out>/heatmaps/*.png (the head's predicted map over each image).")
    predict.add_argument("--model", required=True, help="the base model the checkpoint was trained on")
    predict.add_argument("--checkpoint", required=True,
                         help="dir with forgery_head.safetensors (+ adapters): output dir, checkpoint-N, best_by_AUROC")
    predict.add_argument("--images", required=True, help="a folder of images, or a text file listing one a line")
    predict.add_argument("--out", required=True, help="output folder (new, or an earlier predict output)")
    predict.add_argument("--prompt", default=None,
                         help="user turn with <image> (default: the forgery converter's, with the checkpoint's words)")
    predict.add_argument("--batch-size", type=int, default=4, help="images scored together")
    predict.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    predict.add_argument("--debug", **debug)
    predict.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # InputError is a ValueError
        if args.debug:
            traceback.print_exc()
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever the library wrote
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
