"""The runs kept under results/ hold the weights their published evaluations attacked.

A figure in the README is only re-checkable if the weights in the repository are the ones
it was measured on: every evaluation records the SHA-256 of the weights it attacked, and
the runs trained since session 10 record one per epoch too (none kept here yet).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustopt.modelfile import WEIGHT_FILES, load_model, read_model_file, weights_sha256
from robustopt.train.restore import evaluation_digests

REPO = Path(__file__).resolve().parents[1]
RUNS = sorted(p for p in (REPO / "results" / "runs").glob("*")
              if (p / "model.json").is_file() and any((p / f).is_file()
                                                      for f in WEIGHT_FILES.values()))
MERGED = REPO / "results" / "headline_shards"
RECHECKS = REPO / "results" / "recheck"


def _recorded(run: Path) -> dict[str, str]:
    """``file -> weights_sha256`` of every evaluation of the run: its own, the merged
    10,000-image one, the re-checks and the benchmarks that attacked its standing points."""
    found = evaluation_digests(run)
    merged = MERGED / f"{run.name}.eval.json"
    if merged.is_file():
        found[str(merged.relative_to(REPO))] = \
            json.loads(merged.read_text())["settings"]["weights_sha256"]
    others = sorted(RECHECKS.glob(f"{run.name}-*.json"))
    others += sorted((REPO / "results").glob(f"square_precision_{run.name}.json"))
    for path in others:
        doc = json.loads(path.read_text())
        if Path(doc.get("model", "")).name == run.name and "weights_sha256" in doc:
            found[str(path.relative_to(REPO))] = doc["weights_sha256"]
    return found


EVALUATED = [run for run in RUNS if _recorded(run)]


def _digests(run: Path) -> dict[str, str]:
    return {which: weights_sha256(read_model_file(run, which)[1])
            for which, name in WEIGHT_FILES.items() if (run / name).is_file()}


@pytest.mark.parametrize("run", EVALUATED, ids=lambda p: p.name)
def test_kept_weights_are_the_ones_evaluated(run: Path) -> None:
    made = _digests(run)
    evaluated = _recorded(run)
    wrong = {name: d[:12] for name, d in evaluated.items() if d not in made.values()}
    assert not wrong, f"{run.name}: evaluations of other weights than the kept ones: {wrong}"
    default = json.loads((run / "model.json").read_text()).get("default_weights", "last")
    assert default in made, f"{run.name}: its default weights ({default}) are not kept"
    assert all(d == made[default] for d in evaluated.values()), \
        f"{run.name}: an evaluation attacked the {set(made) - {default}} weights"


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_kept_runs_load(run: Path) -> None:
    model = load_model(run)
    assert sum(p.numel() for p in model.parameters()) > 0
