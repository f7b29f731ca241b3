"""Merge evaluation shards (``robustopt evaluate --start S --n N``) into one evaluation.

An evaluation of 10,000 test points under a strong suite takes hours on a small CPU; split
into shards of test-image ranges it can run across sessions or machines. Each shard attacked
its own range with the same weights (matched by their SHA-256, not by path), threat model,
suite and budget, and the chain's robust set over the whole range is the union of the
shards' robust sets: the merged figures are exact sums, never averages of percentages.
Shards must not overlap; gaps are allowed, reported, and not counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RobustOptError
from ..modelfile import read_model_file, weights_sha256

# settings every shard must share (the range, timing, machine and model path may differ)
_SAME = ("dataset", "norm", "eps", "suite", "budget", "transfer_from")


def load_shard(path: Path) -> dict:
    """Read one evaluation JSON, refusing anything that is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RobustOptError(f"{path}: cannot read an evaluation ({exc})") from None
    if not isinstance(doc, dict) or "per_example" not in doc or "test_indices" not in doc:
        raise RobustOptError(f"{path}: not a robustopt evaluation (no per_example / test_indices)")
    return doc


def _weights_digest(path: Path, doc: dict) -> str:
    """The shard's ``weights_sha256``, or (for evaluations that predate it) the digest of
    the weights at its model path, if that path still holds them."""
    if doc["settings"].get("weights_sha256"):
        return doc["settings"]["weights_sha256"]
    model = Path(doc["settings"]["model"])
    if not model.exists():
        raise RobustOptError(f"{path} does not name its weights' digest and its model "
                             f"{model} is not here: run the merge where the model is")
    return weights_sha256(read_model_file(model)[1])


def _check_compatible(docs: list[tuple[Path, dict]]) -> str:
    """The one weights digest all shards attacked; refuses shards that differ in anything else."""
    first_path, first = docs[0]
    digests = {path: _weights_digest(path, doc) for path, doc in docs}
    if len(set(digests.values())) > 1:
        raise RobustOptError("the shards attacked different weights: " + "; ".join(
            f"{p}: {d[:12]}" for p, d in digests.items()))
    for path, doc in docs[1:]:
        for key in _SAME:
            if doc["settings"].get(key) != first["settings"].get(key):
                raise RobustOptError(f"{path} and {first_path} differ in {key!r}: "
                                     f"{doc['settings'].get(key)!r} vs "
                                     f"{first['settings'].get(key)!r}; merge only shards of "
                                     "one evaluation")
        names = [a["name"] for a in doc["attacks"]]
        if names != [a["name"] for a in first["attacks"]]:
            raise RobustOptError(f"{path} and {first_path} ran different attack chains")
    return digests[first_path]


def _check_ranges(docs: list[tuple[Path, dict]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges; returns the gaps between them."""
    gaps = []
    for (p0, a), (p1, b) in zip(docs, docs[1:], strict=False):
        stop, start = a["test_indices"]["stop"], b["test_indices"]["start"]
        if start < stop:
            raise RobustOptError(f"{p0} and {p1} overlap (test images {start}..{stop - 1}): "
                                 "each point must be attacked by one shard")
        if start > stop:
            gaps.append((stop, start))
    return gaps


def merge_shards(docs: list[tuple[Path, dict]]) -> dict:
    """One evaluation from shards that attacked disjoint test ranges of one model with one
    suite: exact sums of the shards' counts and their per-example records in order."""
    docs = sorted(docs, key=lambda pd: pd[1]["test_indices"]["start"])
    digest = _check_compatible(docs)
    gaps = _check_ranges(docs)
    per_example = {key: [v for _, d in docs for v in d["per_example"][key]]
                   for key in docs[0][1]["per_example"]}
    n = len(per_example["robust"])
    clean = sum(per_example["clean_correct"])
    attacks, survivors = [], clean
    for i, first in enumerate(docs[0][1]["attacks"]):
        rows = [d["attacks"][i] for _, d in docs]
        attacked = sum(r["attacked"] for r in rows)
        broke = sum(r["broke"] for r in rows)
        survivors -= broke
        attacks.append({
            "name": first["name"], "spec": first["spec"], "attacked": attacked,
            "broke": broke,
            "accuracy_on_attacked": (attacked - broke) / attacked if attacked else None,
            "cumulative_accuracy": survivors / n,
            "time_s": sum(r["time_s"] for r in rows),
            "passes": sum(r["passes"] for r in rows),
            "full_passes": sum(r["full_passes"] for r in rows),
        })
    robust = sum(per_example["robust"])
    if robust != survivors:
        raise RobustOptError(f"the shards disagree with themselves: {robust} points robust "
                             f"per example, {survivors} by the attacks' counts")
    settings = {k: v for k, v in docs[-1][1]["settings"].items() if k not in ("n", "start")}
    settings["weights_sha256"] = digest
    return {
        "robustopt_version": docs[0][1]["robustopt_version"],
        "settings": settings,
        "merged_from": [str(p) for p, _ in docs],
        "test_indices": {"split": "test", "start": docs[0][1]["test_indices"]["start"],
                         "stop": docs[-1][1]["test_indices"]["stop"],
                         "gaps": [list(g) for g in gaps]},
        "threat": docs[0][1]["threat"],
        "suite": docs[0][1]["suite"],
        "n": n,
        "clean_accuracy": clean / n,
        "robust_accuracy": robust / n,
        "attacks": attacks,
        "time_s": sum(d["time_s"] for _, d in docs),
        "failed_sanity": [{"shard": d["test_indices"], "name": s["name"],
                           "detail": s["detail"]}
                          for _, d in docs for s in d.get("sanity") or []
                          if s.get("passed") is False],
        "shards": [{"file": str(p), "test_indices": d["test_indices"], "n": d["n"],
                    "seed": d.get("seed"), "clean_accuracy": d["clean_accuracy"],
                    "robust_accuracy": d["robust_accuracy"], "time_s": d["time_s"]}
                   for p, d in docs],
        "per_example": per_example,
    }


def shards_table(doc: dict) -> str:
    """The merged evaluation as a short text table."""
    ti = doc["test_indices"]
    lines = [f"{doc['n']} test points ({ti['start']}..{ti['stop'] - 1}"
             + (f", gaps {ti['gaps']}" if ti["gaps"] else "") + f") from {len(doc['shards'])} "
             f"shard(s); {doc['threat']['norm']} eps {doc['threat']['eps']:.4g}",
             f"{'attack':<32}{'attacked':>9}{'broke':>7}{'cumulative':>12}{'time':>9}",
             f"{'clean':<32}{doc['n']:>9}{doc['n'] - round(doc['clean_accuracy'] * doc['n']):>7}"
             f"{doc['clean_accuracy']:>12.2%}"]
    for a in doc["attacks"]:
        lines.append(f"{a['name']:<32}{a['attacked']:>9}{a['broke']:>7}"
                     f"{a['cumulative_accuracy']:>12.2%}{a['time_s']:>8.0f}s")
    lines.append(f"robust accuracy (worst case over all attacks): {doc['robust_accuracy']:.2%} "
                 f"({round(doc['robust_accuracy'] * doc['n'])} of {doc['n']}); clean "
                 f"{doc['clean_accuracy']:.2%}; attack time {doc['time_s']:.0f} s")
    lines.append("per shard: " + ", ".join(
        f"{s['test_indices']['start']}-{s['test_indices']['stop']}: {s['robust_accuracy']:.1%}"
        for s in doc["shards"]))
    for s in doc["failed_sanity"]:
        lines.append(f"failed sanity check in shard {s['shard']['start']}-"
                     f"{s['shard']['stop']}: {s['name']}: {s['detail']}")
    return "\n".join(lines)
