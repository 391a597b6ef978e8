import gzip
import json

import pytest

from tools import gpu_gaps


def _x(cat, name, ts, dur):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


TRACE = {"traceEvents": [
    _x("kernel", "gemm", 0, 100), _x("kernel", "gemm", 50, 150),  # overlapping: busy 0-200
    _x("gpu_memcpy", "Memcpy HtoD", 1200, 100),                    # gap 200-1200 (1000 us)
    _x("kernel", "add", 1300, 50),                                  # touches the copy: busy 1200-1350
    _x("kernel", "add", 1400, 100),                                 # gap 1350-1400 (50 us, under the threshold)
    _x("kernel", "norm", 4500, 500),                                # gap 1500-4500 (3000 us)
    _x("cpu_op", "training_step", 0, 5000),
    _x("cpu_op", "aten::item", 150, 1000),                          # covers the first gap
    _x("cuda_runtime", "cudaStreamSynchronize", 160, 30),           # too short to cover it
    _x("user_annotation", "DataLoader.__next__", 1600, 2800),       # covers the third gap
    {"ph": "i", "cat": "kernel", "name": "instant", "ts": 10},      # not a duration event
]}


def test_merge_unions_overlapping_and_touching_intervals():
    assert gpu_gaps.merge([(5, 6), (0, 2), (1, 3), (3, 4)]) == [(0, 4), (5, 6)]


def test_analyse_busy_gaps_and_their_host_events():
    result = gpu_gaps.analyse(TRACE, min_gap_us=100)
    assert result["span_us"] == 5000
    assert result["busy_us"] == 200 + 150 + 100 + 500
    assert result["idle_us"] == 5000 - 950
    assert [(g["start_us"], g["gap_us"], g["host"]) for g in result["gaps"]] == [
        (200, 1000, "aten::item"), (1500, 3000, "DataLoader.__next__")]
    assert result["gaps_us"] == 4000
    assert list(result["idle_by_host"].items()) == [("DataLoader.__next__", 3000), ("aten::item", 1000)]


def test_gap_without_covering_host_event_and_trace_without_kernels():
    trace = {"traceEvents": [_x("kernel", "a", 0, 10), _x("kernel", "b", 500, 10)]}
    assert gpu_gaps.analyse(trace)["gaps"][0]["host"] == "(no host event)"
    with pytest.raises(ValueError, match="no GPU kernels"):
        gpu_gaps.analyse({"traceEvents": [_x("cpu_op", "a", 0, 10)]})


def test_cli_reads_gzipped_trace(tmp_path, capsys):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(TRACE, f)
    gpu_gaps.main([str(path)])
    out = capsys.readouterr().out
    assert "traced span 5.0 ms: GPU busy 0.95 ms (19.0%)" in out
    assert "   3.00 | DataLoader.__next__" in out
