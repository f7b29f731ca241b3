"""Robust counts of kept models and trials on the same slice of test images.

A trial evaluated on the first N test images cannot be compared with a headline figure
on all 10,000: the first images are harder than the rest. This prints, for each kept
model, the points of test images FROM..TO-1 that its headline chain (a merged
``eval.json`` over the whole test set) and every ``benchmarks/recheck_eval.py`` piece
left standing, and for each trial the same count from its own evaluation of those
images, so both read on one scale.

    python experiments/slice_worst_case.py --to 1000 \\
        --kept results/headline_shards/mnist-best-seed0.eval.json \\
               'results/recheck/mnist-best-seed0-*.json' \\
        --trial results/trials/best-eps033/trial-eval.json
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import Counter
from pathlib import Path


def kept_row(eval_path: Path, recheck_globs: list[str], lo: int, hi: int) -> str:
    doc = json.loads(eval_path.read_text())
    start = doc["test_indices"]["start"]
    pe = doc["per_example"]
    if start > lo or start + len(pe["robust"]) < hi:
        raise SystemExit(f"{eval_path} covers test images {start}.."
                         f"{start + len(pe['robust']) - 1}, not {lo}..{hi - 1}")
    rows = range(lo - start, hi - start)
    clean = sum(bool(pe["clean_correct"][i]) for i in rows)
    by = Counter(pe["broken_by"][i] for i in rows
                 if pe["clean_correct"][i] and pe["broken_by"][i] is not None)
    standing = {start + i for i in rows if pe["robust"][i]}
    rechecks = Counter()
    for pattern in recheck_globs:
        for path in sorted(glob.glob(pattern)):
            piece = json.loads(Path(path).read_text())
            if "broken" not in piece or Path(piece.get("eval", "")) != eval_path:
                continue
            hit = standing & set(piece["broken"])
            rechecks[piece["attacks"]] += len(hit)  # the label combine() groups by
            standing -= hit
    breaks = ", ".join(f"{k} {v}" for k, v in by.most_common())
    extra = ", ".join(f"{k} {v}" for k, v in sorted(rechecks.items())) or "none"
    return (f"{eval_path}: clean {clean}, chain broke {sum(by.values())} ({breaks}), "
            f"re-checks broke {sum(rechecks.values())} ({extra}) -> {len(standing)} robust")


def trial_row(path: Path, lo: int, hi: int) -> str:
    doc = json.loads(path.read_text())
    ti = doc["test_indices"]
    if (ti["start"], ti["stop"]) != (lo, hi):
        raise SystemExit(f"{path} covers test images {ti['start']}..{ti['stop'] - 1}, "
                         f"not {lo}..{hi - 1}")
    pe = doc["per_example"]
    clean = sum(bool(c) for c in pe["clean_correct"])
    by = Counter(b for c, b in zip(pe["clean_correct"], pe["broken_by"], strict=True) if c and b)
    breaks = ", ".join(f"{a['name']} {by.get(a['name'], 0)}" for a in doc["attacks"])
    return (f"{path}: clean {clean}, broke {sum(by.values())} ({breaks}) -> "
            f"{sum(bool(r) for r in pe['robust'])} robust")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="lo", type=int, default=0, help="first test image")
    p.add_argument("--to", dest="hi", type=int, default=1000, help="one past the last")
    p.add_argument("--kept", nargs="+", action="append", default=[], metavar="FILE",
                   help="a merged eval.json, then globs of its recheck_eval.py pieces")
    p.add_argument("--trial", nargs="+", type=Path, default=[], help="trial eval JSONs")
    args = p.parse_args()
    print(f"test images {args.lo}..{args.hi - 1} ({args.hi - args.lo} points), L-inf 0.3")
    for kept in args.kept:
        print(kept_row(Path(kept[0]), kept[1:], args.lo, args.hi))
    for path in args.trial:
        print(trial_row(path, args.lo, args.hi))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
