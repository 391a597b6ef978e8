"""Evaluation of Qwen-VL fine-tunes that says why a model fails, not just that it does.

    python -m eval run --task caption|grounding|microscopy|forgery --model M [--adapter A] --data D --out O
    python -m eval score --task T --model-family F --predictions P.jsonl --out O
    python -m eval compare RUN_A RUN_B --out O

The same as functions (the demo calls these):
    eval.run.run_eval(task, model, data, out, *, adapter=None, split=None, limit=None, batch_size=4,
                      max_new_tokens=128, device=None, dtype=None, min_pixels=None, max_pixels=None,
                      resize_path=None, java_metrics=True, overwrite=False) -> dict   (metrics.json content)
    eval.score.score_predictions(task, family, predictions, out, **ScoreSettings fields) -> dict
    eval.compare.compare_runs(run_a, run_b, out, *, names=None, max_rows=20, max_images=4) -> Path (report.md)

Box conventions live in converters.boxes only; eval reads them back through eval.parse.BoxConvention.
"""
