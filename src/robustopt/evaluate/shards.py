"""Merge evaluation shards (``robustopt evaluate --start S --n N``) into one evaluation.

An evaluation of 10,000 test points under a strong suite takes hours on a small CPU; split
into shards of test-image ranges it can run across sessions or machines. Each shard attacked
its own range with the same weights (matched by their SHA-256, not by path), threat model
and attack chain (compared spec by spec), and the chain's robust set over the whole range
is the union of the shards' robust sets: the merged figures are exact sums, never averages
of percentages. Shards must not overlap; gaps are allowed, reported, and not counted.
Each shard's own sanity verdicts are kept (failures listed); chain-level checks are not
recomputed over the union, but every attack's counts are.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError, RobustOptError
from ..modelfile import read_model_file, weights_sha256
from .suites import AttackSpec

# settings every shard must share (range, timing, machine, batch size and path may differ)
_SAME = ("dataset", "norm", "eps", "suite", "budget", "transfer_from")
_TOP = {"settings": dict, "test_indices": dict, "threat": dict, "attacks": list,
        "per_example": dict, "n": int, "clean_accuracy": float, "robust_accuracy": float,
        "time_s": float}
_ATTACK = ("name", "spec", "attacked", "broke", "time_s", "passes")


def _chain(doc: dict, path: Path | str) -> list[dict]:
    """A shard's attack specs with every field filled in, so a shard written before a
    field existed (e.g. ``smooth``) matches a newer one that records its default."""
    try:
        return [AttackSpec.from_dict(a["spec"]).to_dict() for a in doc["attacks"]]
    except (InputError, TypeError, ValueError) as err:
        raise RobustOptError(f"{path} has an attack spec robustopt cannot read ({err})") from None


def load_shard(path: Path | str) -> dict:
    """Read one evaluation JSON; refuse anything that is not one whole, unmerged shard."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RobustOptError(f"{path}: cannot read an evaluation ({exc})") from None
    if not isinstance(doc, dict):
        raise RobustOptError(f"{path}: not a robustopt evaluation (not a JSON object)")
    if "merged_from" in doc:
        raise RobustOptError(f"{path} is itself a merge: merge its shards "
                             f"({', '.join(doc['merged_from'])}) instead")
    for key, kind in _TOP.items():
        ok = isinstance(doc.get(key), (int, float) if kind is float else kind)
        if not ok or isinstance(doc.get(key), bool):
            raise RobustOptError(f"{path}: not a robustopt evaluation ({key!r} missing or "
                                 f"not a {kind.__name__})")
    ti = doc["test_indices"]
    if not (isinstance(ti.get("start"), int) and isinstance(ti.get("stop"), int)
            and 0 <= ti["start"] <= ti["stop"]):
        raise RobustOptError(f"{path}: test_indices {ti!r} is not a range")
    n = ti["stop"] - ti["start"]
    lengths = {k: len(v) for k, v in doc["per_example"].items() if isinstance(v, list)}
    if doc["n"] != n or "robust" not in lengths or "clean_correct" not in lengths or any(
            length != n for length in lengths.values()):
        raise RobustOptError(f"{path}: per-example records ({sorted(set(lengths.values()))}) "
                             f"and n ({doc['n']}) do not match its range {ti['start']}.."
                             f"{ti['stop'] - 1} ({n} points)")
    for row in doc["attacks"]:
        if not isinstance(row, dict) or any(k not in row for k in _ATTACK):
            raise RobustOptError(f"{path}: an attack row lacks one of {', '.join(_ATTACK)}")
    return doc


def _weights_digest(path: Path, doc: dict) -> tuple[str, bool]:
    """``(digest, inferred)``: the shard's ``weights_sha256``, or for evaluations that
    predate it the digest of the weights now at its model path (relative to the current
    directory), which is inferred, not recorded."""
    if doc["settings"].get("weights_sha256"):
        return doc["settings"]["weights_sha256"], False
    model = doc["settings"].get("model")
    if not isinstance(model, str) or not Path(model).exists():
        raise RobustOptError(f"{path} predates weights digests and its model {model!r} is not "
                             f"in {Path.cwd()}: run the merge from where it was evaluated")
    return weights_sha256(read_model_file(model)[1]), True


def _check_compatible(docs: list[tuple[Path, dict]]) -> tuple[str, list[str]]:
    """The one weights digest all shards attacked and the shards whose digest was inferred;
    refuses shards that differ in anything else that defines the evaluation."""
    first_path, first = docs[0]
    digests = {path: _weights_digest(path, doc) for path, doc in docs}
    if len({d for d, _ in digests.values()}) > 1:
        raise RobustOptError("the shards attacked different weights: " + "; ".join(
            f"{p}: {d[:12]}" for p, (d, _) in digests.items()))
    chain = _chain(first, first_path)
    for path, doc in docs[1:]:
        for key in _SAME:
            if doc["settings"].get(key) != first["settings"].get(key):
                raise RobustOptError(f"{path} and {first_path} differ in {key!r}: "
                                     f"{doc['settings'].get(key)!r} vs "
                                     f"{first['settings'].get(key)!r}; merge only shards of "
                                     "one evaluation")
        if _chain(doc, path) != chain:
            raise RobustOptError(f"{path} and {first_path} ran different attack chains")
        if set(doc["per_example"]) != set(first["per_example"]):
            raise RobustOptError(f"{path} and {first_path} record different per-example "
                                 "fields (written by different robustopt versions?)")
    return digests[first_path][0], [str(p) for p, (_, inferred) in digests.items() if inferred]


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


def _merged_attacks(docs: list[dict], clean: int, n: int) -> tuple[list[dict], int]:
    """Each attack's summed counts along the chain, and the points left after the last."""
    attacks, survivors = [], clean
    for i, first in enumerate(docs[0]["attacks"]):
        rows = [d["attacks"][i] for d in docs]
        attacked = sum(r["attacked"] for r in rows)
        broke = sum(r["broke"] for r in rows)
        survivors -= broke
        full = [r.get("full_passes") for r in rows]
        attacks.append({
            "name": first["name"], "spec": first["spec"], "attacked": attacked,
            "broke": broke,
            "accuracy_on_attacked": (attacked - broke) / attacked if attacked else None,
            "cumulative_accuracy": survivors / n if n else None,
            "time_s": sum(r["time_s"] for r in rows),
            "passes": sum(r["passes"] for r in rows),
            "full_passes": None if None in full else sum(full),
        })
    return attacks, survivors


def merge_shards(docs: list[tuple[Path, dict]]) -> dict:
    """One evaluation from shards (``(path, load_shard(path))`` pairs, any order) that
    attacked disjoint test ranges of one model with one chain: exact sums of the shards'
    counts and their per-example records in test-image order."""
    if not docs:
        raise RobustOptError("no shards to merge")
    docs = sorted(docs, key=lambda pd: pd[1]["test_indices"]["start"])
    digest, inferred = _check_compatible(docs)
    gaps = _check_ranges(docs)
    shards = [d for _, d in docs]
    per_example = {key: [v for d in shards for v in d["per_example"][key]]
                   for key in shards[0]["per_example"]}
    n = len(per_example["robust"])
    clean, robust = sum(per_example["clean_correct"]), sum(per_example["robust"])
    attacks, survivors = _merged_attacks(shards, clean, n)
    if robust != survivors:
        raise RobustOptError(f"the shards disagree with themselves: {robust} points robust "
                             f"per example, {survivors} by the attacks' counts")
    per_shard = ("model", "device", "batch_size", "index_offset", "sanity", "n", "start",
                 "weights_channels_last")
    settings = {k: v for k, v in shards[0]["settings"].items() if k not in per_shard}
    settings["weights_sha256"] = digest
    settings["weights_sha256_inferred_for"] = inferred
    passes = [d.get("passes") or {} for d in shards]
    return {
        "robustopt_version": ", ".join(sorted({str(d.get("robustopt_version", "?"))
                                               for d in shards})),
        "settings": settings,
        "merged_from": [str(p) for p, _ in docs],
        "test_indices": {"split": "test", "start": shards[0]["test_indices"]["start"],
                         "stop": shards[-1]["test_indices"]["stop"],
                         "gaps": [list(g) for g in gaps]},
        "threat": shards[0]["threat"],
        "suite": shards[0].get("suite"),
        "n": n,
        "clean_accuracy": clean / n if n else None,
        "robust_accuracy": robust / n if n else None,
        "attacks": attacks,
        "passes": {k: sum(p.get(k, 0) for p in passes) for k in ("spent", "full_budget",
                                                                 "sanity")},
        "time_s": sum(d["time_s"] for d in shards),
        "failed_sanity": [{"shard": d["test_indices"], "name": s["name"],
                           "detail": s["detail"]}
                          for d in shards for s in d.get("sanity") or []
                          if s.get("passed") is False],
        "shards": [{"file": str(p), "test_indices": d["test_indices"], "n": d["n"],
                    "seed": d.get("seed"),
                    **{k: d["settings"].get(k) for k in per_shard[:5]},
                    "clean_accuracy": d["clean_accuracy"],
                    "robust_accuracy": d["robust_accuracy"], "time_s": d["time_s"]}
                   for p, d in docs],
        "per_example": per_example,
    }


def shards_table(doc: dict) -> str:
    """The merged evaluation as a short text table."""
    ti, n = doc["test_indices"], doc["n"]
    lines = [f"{n} test points ({ti['start']}..{ti['stop'] - 1}"
             + (f", gaps {ti['gaps']}" if ti["gaps"] else "") + f") from {len(doc['shards'])} "
             f"shard(s); {doc['threat']['norm']} eps {doc['threat']['eps']:.4g}",
             f"{'attack':<32}{'attacked':>9}{'broke':>7}{'cumulative':>12}{'time':>9}",
             f"{'clean':<32}{n:>9}{n - round(doc['clean_accuracy'] * n):>7}"
             f"{doc['clean_accuracy']:>12.2%}"]
    for a in doc["attacks"]:
        lines.append(f"{a['name']:<32}{a['attacked']:>9}{a['broke']:>7}"
                     f"{a['cumulative_accuracy']:>12.2%}{a['time_s']:>8.0f}s")
    lines.append(f"robust accuracy (worst case over all attacks): {doc['robust_accuracy']:.2%} "
                 f"({round(doc['robust_accuracy'] * n)} of {n}); clean "
                 f"{doc['clean_accuracy']:.2%}; attack time {doc['time_s']:.0f} s")
    lines.append("per shard (robust): " + ", ".join(
        f"{s['test_indices']['start']}-{s['test_indices']['stop']}: {s['robust_accuracy']:.1%}"
        for s in doc["shards"]))
    if doc["settings"]["weights_sha256_inferred_for"]:
        lines.append("weights digest inferred (file predates digests) for: "
                     + ", ".join(doc["settings"]["weights_sha256_inferred_for"]))
    for s in doc["failed_sanity"]:
        lines.append(f"failed sanity check in shard {s['shard']['start']}-"
                     f"{s['shard']['stop']}: {s['name']}: {s['detail']}")
    return "\n".join(lines)
