"""Where the GPU waits: idle gaps between kernels in a torch.profiler chrome trace, and what the host was doing
during each.

    python -m tools.gpu_gaps OUT/trace_lf_ours.json.gz        # a trace written by `tools.bench run --profile`

A training step whose kernels add up to less than its wall time loses the difference in gaps: the GPU has run out
of queued work because the host synchronised (`.item()`, `.tolist()`, a data-dependent shape) and then spent time
in Python, the loader or the allocator before launching the next kernel. Each gap is attributed to the narrowest
host event (operator, CUDA runtime call, annotation) that covers most of it.
"""
from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
HOST_CATEGORIES = {"cpu_op", "cuda_runtime", "cuda_driver", "user_annotation", "python_function"}


def _intervals(events, categories):
    return [(e["ts"], e["ts"] + e.get("dur", 0), e) for e in events
            if e.get("ph") == "X" and e.get("cat") in categories]


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) intervals, sorted."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


class HostEvents:
    """Host events as arrays, to find which covers a gap without a Python loop over every event."""

    def __init__(self, intervals: list[tuple[float, float, dict]]):
        import numpy as np

        self.starts = np.array([s for s, _, _ in intervals], dtype=float)
        self.ends = np.array([e for _, e, _ in intervals], dtype=float)
        self.names = [ev["name"] for _, _, ev in intervals]

    def cover(self, start: float, end: float) -> str:
        """Name of the shortest host event that covers at least half of [start, end), or '(no host event)'."""
        import numpy as np

        if not self.names:
            return "(no host event)"
        overlap = np.minimum(self.ends, end) - np.maximum(self.starts, start)
        candidates = np.flatnonzero(overlap >= (end - start) / 2)
        if not len(candidates):
            return "(no host event)"
        return self.names[candidates[np.argmin(self.ends[candidates] - self.starts[candidates])]]


def analyse(trace: dict, min_gap_us: float = 100.0) -> dict:
    """GPU busy time, idle gaps >= `min_gap_us` (microseconds) inside the traced span, and the idle time per
    covering host event, from a chrome trace dict (`traceEvents`)."""
    events = trace["traceEvents"]
    gpu = merge([(s, e) for s, e, _ in _intervals(events, GPU_CATEGORIES)])
    if not gpu:
        raise ValueError("the trace has no GPU kernels")
    host = HostEvents(_intervals(events, HOST_CATEGORIES))
    span = gpu[-1][1] - gpu[0][0]
    busy = sum(e - s for s, e in gpu)
    gaps = []
    for (_, prev_end), (next_start, _) in zip(gpu, gpu[1:]):
        if next_start - prev_end >= min_gap_us:
            gaps.append({"start_us": prev_end - gpu[0][0], "gap_us": next_start - prev_end,
                         "host": host.cover(prev_end, next_start)})
    by_host: dict[str, float] = defaultdict(float)
    for gap in gaps:
        by_host[gap["host"]] += gap["gap_us"]
    return {"span_us": span, "busy_us": busy, "idle_us": span - busy,
            "gaps_us": sum(g["gap_us"] for g in gaps), "gaps": gaps,
            "idle_by_host": dict(sorted(by_host.items(), key=lambda kv: -kv[1]))}


def load_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


def format_report(result: dict, top: int = 25) -> str:
    ms = 1e-3
    lines = [f"traced span {result['span_us'] * ms:.1f} ms: GPU busy {result['busy_us'] * ms:.2f} ms "
             f"({result['busy_us'] / result['span_us']:.1%}), idle {result['idle_us'] * ms:.1f} ms, of which "
             f"{result['gaps_us'] * ms:.1f} ms in {len(result['gaps'])} gaps >= the threshold",
             "", "idle ms | host event covering the gap"]
    lines += [f"{us * ms:7.2f} | {name}" for name, us in list(result["idle_by_host"].items())[:top]]
    lines += ["", "largest gaps: at ms | gap ms | host event"]
    for gap in sorted(result["gaps"], key=lambda g: -g["gap_us"])[:top]:
        lines.append(f"{gap['start_us'] * ms:8.2f} | {gap['gap_us'] * ms:6.2f} | {gap['host']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", type=Path, help="chrome trace (.json or .json.gz) from torch.profiler")
    parser.add_argument("--min-gap-us", type=float, default=100.0, help="smallest idle gap listed (microseconds)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(format_report(analyse(load_trace(args.trace), args.min_gap_us), args.top))


if __name__ == "__main__":
    main()
