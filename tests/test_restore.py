"""`robustopt train --restore`: a kept run without weights gets back exactly its weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from robustopt.cli import main
from robustopt.modelfile import weights_sha256
from robustopt.train import TrainConfig, train
from robustopt.train.restore import restore_weights

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

TINY = dict(dataset="mnist", data_dir=str(DATA), train_n=400, heldout_n=50, epochs=2,
            batch_size=50, model="small-mnist", eps=0.1, adversary="pgd", attack_steps=2,
            lr=3e-3, schedule="constant", eval_steps=3, device="cpu", seed=3)
WEIGHTS = ("best.safetensors", "model.safetensors")


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A finished tiny run with an evaluation that recorded the digest it attacked."""
    run = tmp_path_factory.mktemp("orig") / "run"
    train(TrainConfig(**TINY), run)
    digest = weights_sha256(load_file(run / "best.safetensors"))
    (run / "shards").mkdir()
    (run / "shards" / "eval-0-10.json").write_text(
        json.dumps({"settings": {"weights_sha256": digest}}))
    return run


def _kept(original: Path, dest: Path) -> Path:
    """The run as a repository keeps it: everything but weights and checkpoint."""
    shutil.copytree(original, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.rmtree(dest / "checkpoint")
    return dest


def test_restore_brings_back_the_same_weights(original, tmp_path, capsys):
    kept = _kept(original, tmp_path / "kept")
    before = {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()}
    assert main(["train", "--restore", str(kept)]) == 0
    out = capsys.readouterr().out
    assert "matched all 2 epoch(s)" in out and "3 recorded weights digest(s)" in out, out
    for name in WEIGHTS:
        assert weights_sha256(load_file(kept / name)) == weights_sha256(
            load_file(original / name)), name
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()
            and p.suffix != ".safetensors"} == before  # nothing else in the run changed
    assert not (tmp_path / ".kept.restore").exists()  # the scratch run is cleaned up


def _expect_refusal(kept: Path, capsys, message: str) -> None:
    assert main(["train", "--restore", str(kept)]) == 2
    err = capsys.readouterr().err  # the retrain's progress, then the one-line error
    last = err.rstrip("\n").splitlines()[-1]
    assert message in last and last.startswith("robustopt: error:"), err
    assert "Traceback" not in err, err
    assert not any((kept / name).exists() for name in WEIGHTS)  # the kept run is untouched


def test_a_retrain_that_differs_is_refused(original, tmp_path, capsys):
    kept = _kept(original, tmp_path / "kept")
    records = [json.loads(line) for line in (kept / "metrics.jsonl").read_text().splitlines()]
    records[1]["heldout_pgd_acc"] += 0.01  # as if trained on another CPU
    (kept / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _expect_refusal(kept, capsys, "epoch 2: heldout_pgd_acc was")
    assert (tmp_path / ".kept.restore" / "best.safetensors").is_file()  # kept for a look


def test_an_evaluation_of_other_weights_is_refused(original, tmp_path, capsys):
    kept = _kept(original, tmp_path / "kept")
    (kept / "eval.json").write_text(json.dumps({"settings": {"weights_sha256": "0" * 64}}))
    _expect_refusal(kept, capsys, "eval.json evaluated weights 000000000000")


def test_a_run_with_weights_or_without_metrics_is_refused(original, tmp_path, capsys):
    assert main(["train", "--restore", str(original)]) == 2
    assert "nothing to restore" in capsys.readouterr().err
    kept = _kept(original, tmp_path / "kept")
    (kept / "metrics.jsonl").unlink()
    _expect_refusal(kept, capsys, "no metrics.jsonl")
    assert main(["train", "--restore", str(kept), "--epochs", "3"]) == 2
    assert "drop the other training flags" in capsys.readouterr().err


def _same_weights(kept: Path, original: Path) -> bool:
    return all(weights_sha256(load_file(kept / name)) == weights_sha256(
        load_file(original / name)) for name in WEIGHTS)


class _Killed(Exception):
    pass


def test_a_restore_killed_mid_training_resumes_its_scratch_run(original, tmp_path):
    kept = _kept(original, tmp_path / "kept")

    def kill_in_epoch_2(kind: str, info: dict) -> None:
        if kind == "step" and info["epoch"] == 2 and info["step"] == 3:
            raise _Killed
    with pytest.raises(_Killed):
        restore_weights(kept, progress=kill_in_epoch_2)
    assert not any((kept / name).exists() for name in WEIGHTS)
    epochs_stepped = set()
    restored = restore_weights(kept, progress=lambda kind, info: epochs_stepped.add(
        info["epoch"]) if kind == "step" else None)
    assert restored.epochs_checked == 2
    assert epochs_stepped == {2}  # epoch 1 came from the scratch run's checkpoint
    assert _same_weights(kept, original)


def test_a_restore_killed_between_the_two_moves_finishes(original, tmp_path):
    kept = _kept(original, tmp_path / "kept")
    train(TrainConfig(**TINY), tmp_path / ".kept.restore")
    (tmp_path / ".kept.restore" / "model.safetensors").rename(kept / "model.safetensors")
    restore_weights(kept)
    assert _same_weights(kept, original)
    assert not (tmp_path / ".kept.restore").exists()


def test_a_scratch_run_of_other_settings_is_retrained(original, tmp_path, monkeypatch):
    kept = _kept(original, tmp_path / "kept")
    train(TrainConfig(**{**TINY, "seed": 4}), tmp_path / ".kept.restore")
    monkeypatch.chdir(kept)  # and "." names the run
    assert main(["train", "--restore", "."]) == 0
    assert _same_weights(kept, original)


def test_weight_files_swapped_in_the_scratch_run_are_refused(original, tmp_path, capsys):
    kept = _kept(original, tmp_path / "kept")
    train(TrainConfig(**TINY), tmp_path / ".kept.restore")
    train(TrainConfig(**{**TINY, "seed": 4}), tmp_path / "other")
    # (a swapped best.safetensors is put back from the checkpoint when the scratch run
    # resumes; the last weights have no copy there, so only the final check catches these)
    shutil.copy(tmp_path / "other" / "model.safetensors",
                tmp_path / ".kept.restore" / "model.safetensors")
    _expect_refusal(kept, capsys, "are not the ones its training recorded")


def test_unreadable_kept_files_are_one_line_errors(original, tmp_path, capsys):
    kept = _kept(original, tmp_path / "kept")
    (kept / "shards" / "eval-10-20.json").write_text('{"settings": ')  # truncated
    _expect_refusal(kept, capsys, "eval-10-20.json is not readable JSON")
    (kept / "shards" / "eval-10-20.json").unlink()
    (kept / "metrics.jsonl").write_text("<<<<<<< HEAD\n")
    _expect_refusal(kept, capsys, "metrics.jsonl is not valid JSON")
