"""docs/performance.png from the records: one panel per model and task with the latest run's variants, bars of
their samples/s coloured by trainer; `report` redraws it."""

import json

import pytest

from tools.bench import chart, orchestrator


def record(model, name, trainer, rate, run, task=None, variant="ours", **extra):
    return dict(model=model, name=name, trainer=trainer, variant=variant, samples_per_s=rate, tokens_per_s=1.0,
                peak_gib=1.0, mfu=0.1, device="NVIDIA H200", date="2026-12-07", data="coco, grounding text", run=run,
                **({"task": task} if task else {}), **extra)


RECORDS = [
    record("qwen2_5_vl_7b", "lf_ours", "llamafactory", 30.0, "2026-12-01 run S (H200; ...)"),
    record("qwen2_5_vl_7b", "lf_plain", "llamafactory", 15.0, "2026-12-07 run AA (H200; ...)", variant="trainer_tuned"),
    record("qwen2_5_vl_7b", "unsloth_tuned", "unsloth", 13.4, "2026-12-07 run AA (H200; ...)", variant="unsloth"),
    record("qwen2_5_vl_7b", "swift_ours", "ms-swift", 36.0, "2026-12-07 run AA (H200; ...)"),
    record("qwen2_5_vl_7b", "seed_t1", "transformers", 4.0, "2026-12-07 run AB (H200; ...)", task="forgery",
           variant="seed_loop"),
    record("qwen2_5_vl_7b", "lf_t1", "llamafactory", 11.0, "2026-12-07 run AB (H200; ...)", task="forgery"),
    record("qwen2_vl_2b", "swift_ours", "ms-swift", 64.7, "2026-12-04 run Y2 (H200; ...)"),
    record("qwen2_vl_2b", "swift_ours:x=1", "ms-swift", 60.1, "2026-12-04 run Y2 (H200; ...)"),  # A/B: in the text
    record("qwen2_vl_2b", "lf_ours:y=2", "llamafactory", 70.2, "2026-12-04 run Y2 (H200; ...)"),  # no lf_ours: a bar
    record("qwen2_5_vl_7b", "lf_ours:x=1", "llamafactory", 33.0, "2026-12-08 run AC1 (H100; ...)"),  # a lever's A/B
]


def test_panels_hold_each_benchmarks_latest_run():
    panels = chart.chart_panels(RECORDS)
    assert [p.title for p in panels] == ["Qwen2.5-VL-7B grounding: 2026-12-07 run AA, NVIDIA H200",
                                         "Qwen2.5-VL-7B forgery: 2026-12-07 run AB, NVIDIA H200",
                                         "Qwen2-VL-2B caption: 2026-12-04 run Y2, NVIDIA H200"]
    assert panels[0].bars == (chart.Bar("lf_plain", "llamafactory", 15.0), chart.Bar("unsloth_tuned", "unsloth", 13.4),
                              chart.Bar("swift_ours", "ms-swift", 36.0))  # run S's row is an earlier run
    assert panels[1].bars == (chart.Bar("seed_t1", "transformers", 4.0), chart.Bar("lf_t1", "llamafactory", 11.0))
    assert panels[2].bars == (chart.Bar("swift_ours", "ms-swift", 64.7), chart.Bar("lf_ours:y=2", "llamafactory", 70.2))


def test_report_draws_the_records_bars(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    barh = matplotlib.axes.Axes.barh

    def recording_barh(self, y, width, **kwargs):
        drawn.append((list(width), list(kwargs["color"])))
        return barh(self, y, width, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", recording_barh)
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(RECORDS + [record("qwen2_vl_2b", "lf_ours", "llamafactory", None,
                                                   "2026-12-04 run Y2 (H200; ...)", error="exit 1")]))
    orchestrator.main(["report", str(source), "--docs", str(tmp_path)])
    png = (tmp_path / "performance.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 200_000
    blue, orange, green, grey = (chart.TRAINER_COLOURS[t] for t in ("llamafactory", "ms-swift", "unsloth", "transformers"))
    assert drawn == [([15.0, 13.4, 36.0], [blue, green, orange]), ([4.0, 11.0], [grey, blue]),
                     ([64.7, 70.2], [orange, blue])]  # the failed record has no bar


def test_a_trainer_without_a_colour_is_an_error(tmp_path):
    with pytest.raises(KeyError, match="axolotl"):
        chart.write_chart([record("qwen2_vl_2b", "x", "axolotl", 1.0, "run Z")], tmp_path / "chart.png")


@pytest.mark.parametrize("label, shown", [
    ("swift_ours", "swift_ours"),
    ("lf_ours:x=1", "lf_ours:x=1"),  # short: one line
    ("swift_t1:ENV.PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",  # its overrides on a line of their own
     "swift_t1:\nENV.PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"),
])
def test_a_long_variant_name_is_drawn_on_two_lines(label, shown):
    assert chart._wrapped(label) == shown
