"""Per-example worst case over every attack ever run on one model's test points.

Combines the ``per_example.robust`` masks of robustopt ``eval.json`` files with the
per-point masks of ``benchmarks/eval_crosscheck.py``'s JSON (robustopt's and
torchattacks' attacks alone and chained), and the points ``benchmarks/recheck_eval.py``
pieces broke (``--recheck``, test indices): a point counts as robust only if it survived
all of them. Every eval and cross-check file must cover the same first-N test points.

    python experiments/union_worst_case.py results/runs/mnist-quick-seed0/eval.json \\
        --crosscheck results/eval_crosscheck.json --recheck 'results/recheck/RUN-*.json'
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("evals", nargs="*", type=Path, help="eval.json files")
    p.add_argument("--crosscheck", type=Path, action="append", default=[],
                   help="eval_crosscheck.py JSON (repeatable)")
    p.add_argument("--recheck", action="append", default=[], metavar="GLOB",
                   help="recheck_eval.py --out pieces (a glob; repeatable)")
    args = p.parse_args()
    masks: dict[str, list[bool]] = {}
    ranges = {}
    for path in args.evals:
        doc = json.loads(path.read_text())
        ranges[str(path)] = doc.get("test_indices")
        masks[f"{path} (chain: {', '.join(a['name'] for a in doc['attacks'])})"] = \
            doc["per_example"]["robust"]
    for path in args.crosscheck:
        doc = json.loads(path.read_text())
        for key, mask in doc["per_point"].items():
            if key != "clean":
                masks[f"{path}: {key}"] = mask
    if len({json.dumps(r, sort_keys=True) for r in ranges.values()}) > 1:
        raise SystemExit("the evaluations cover different test images: " + "; ".join(
            f"{p}: {r}" for p, r in ranges.items()))
    sizes = {len(m) for m in masks.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the files cover different numbers of points: {sorted(sizes)}")
    n = sizes.pop()
    start = next(iter(ranges.values()), None) or {"start": 0}
    for pattern in args.recheck:
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise SystemExit(f"--recheck {pattern!r} matches no file")
        for path in paths:
            piece = json.loads(Path(path).read_text())
            mask = [True] * n
            for i in piece["broken"]:
                if not start["start"] <= i < start["start"] + n:
                    raise SystemExit(f"{path} broke test index {i}, outside the evaluations'")
                mask[i - start["start"]] = False
            masks[f"{path}: {piece['attacks']} broke {len(piece['broken'])}"] = mask
    robust = [all(m[i] for m in masks.values()) for i in range(n)]
    for name, m in masks.items():
        print(f"{sum(m) / n:7.2%}  {name}")
    print(f"{sum(robust) / n:7.2%}  per-example worst case over all of the above "
          f"({sum(robust)} of {n} points)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
