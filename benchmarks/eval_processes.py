"""One evaluation process with every thread vs one single-thread process per core.

A sharded evaluation (``robustopt evaluate --start``) can run its shards one after another
with torch's default thread count, or side by side with one thread each. This times both
on the same images with the same suite: the first ``--n`` MNIST test images of a kept run,
``--batch-size`` a divisor of the shard size so both ways draw the same random numbers for
every point. Side by side, each process gets ``OMP_NUM_THREADS=1`` and an equal shard.
Run it alone on the machine: it times wall clocks.

    python benchmarks/eval_processes.py | tee results/eval_processes.txt      # ~80 s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = [{"attack": "apgd", "loss": "ce"}, {"attack": "square", "queries": 500}]


def launch(run: str, start: int, n: int, args: argparse.Namespace, out: Path,
           threads: int | None) -> subprocess.Popen:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "robustopt", "evaluate", run, "--start", str(start),
           "--n", str(n), "--suite", str(args.suite_file), "--no-sanity", "--eps", "0.3",
           "--batch-size", str(args.batch_size), "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"robustopt evaluate failed: {err.strip().splitlines()[-1]}")


def robust(paths: list[Path]) -> list[bool]:
    return [r for p in paths for r in json.loads(p.read_text())["per_example"]["robust"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="results/runs/mnist-best-tcnn-seed0")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    p.add_argument("--batch-size", type=int, default=200)
    args = p.parse_args()
    k = args.processes
    if args.n % (k * args.batch_size):
        raise SystemExit(f"--n {args.n} must be a multiple of --processes x --batch-size")
    with tempfile.TemporaryDirectory() as tmp:
        args.suite_file = Path(tmp) / "suite.json"
        args.suite_file.write_text(json.dumps(SUITE))
        one = [Path(tmp) / "one.json"]
        start = time.perf_counter()
        wait_all([launch(args.run, 0, args.n, args, one[0], None)])
        t_one = time.perf_counter() - start
        size = args.n // k
        many = [Path(tmp) / f"part{i}.json" for i in range(k)]
        start = time.perf_counter()
        wait_all([launch(args.run, i * size, size, args, many[i], 1) for i in range(k)])
        t_many = time.perf_counter() - start
        a, b = robust(one), robust(many)
    same = sum(x == y for x, y in zip(a, b, strict=True))
    print(f"{args.run}: first {args.n} MNIST test images, eps 0.3, {json.dumps(SUITE)}, "
          f"batch {args.batch_size}, wall clock including start-up")
    print(f"1 process, default threads:   {t_one:7.1f} s  robust {sum(a)}/{args.n}")
    print(f"{k} processes, 1 thread each: {t_many:7.1f} s  robust {sum(b)}/{args.n}  "
          f"speed-up {t_one / t_many:.2f}x, same verdicts on {same}/{args.n} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
