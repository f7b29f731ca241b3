"""The runs kept under results/ hold the weights their published evaluations attacked.

A figure in the README is only re-checkable if the weights in the repository are the ones
it was measured on: every evaluation records the SHA-256 of the weights it attacked, and
every epoch of metrics.jsonl the digest of the weights it wrote.
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


def _digests(run: Path) -> dict[str, str]:
    return {which: weights_sha256(read_model_file(run, which)[1])
            for which, name in WEIGHT_FILES.items() if (run / name).is_file()}


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_kept_weights_are_the_ones_evaluated(run: Path) -> None:
    made = _digests(run)
    evaluated = evaluation_digests(run)
    merged = MERGED / f"{run.name}.eval.json"
    if merged.is_file():
        evaluated[str(merged.relative_to(REPO))] = \
            json.loads(merged.read_text())["settings"]["weights_sha256"]
    wrong = {name: d[:12] for name, d in evaluated.items() if d not in made.values()}
    assert not wrong, f"{run.name}: evaluations of other weights than the kept ones: {wrong}"
    default = json.loads((run / "model.json").read_text()).get("default_weights", "last")
    assert all(d == made[default] for d in evaluated.values()), \
        f"{run.name}: an evaluation attacked the {set(made) - {default}} weights"


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_kept_last_weights_match_the_last_epoch(run: Path) -> None:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    recorded = records[-1].get("weights_sha256") if records else None
    if recorded is None or not (run / WEIGHT_FILES["last"]).is_file():
        pytest.skip(f"{run.name} predates per-epoch weights digests")
    assert _digests(run)["last"] == recorded


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_kept_runs_load(run: Path) -> None:
    model = load_model(run)
    assert sum(p.numel() for p in model.parameters()) > 0
