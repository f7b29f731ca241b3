"""Training: adversaries work, metrics are recorded, resume is exact, bad input is refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustopt import LinfBall, load_dataset, load_model, pgd
from robustopt.cli import main
from robustopt.errors import RobustOptError
from robustopt.modelfile import weights_sha256
from robustopt.rundir import RunDir
from robustopt.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

TINY = dict(dataset="mnist", data_dir=str(DATA), train_n=1100, heldout_n=100, epochs=2,
            batch_size=50, model="small-mnist", eps=0.1, attack_steps=3, lr=3e-3,
            schedule="constant", eval_steps=5, device="cpu", seed=0)

METRIC_FIELDS = {"epoch", "train_loss", "train_robust_acc", "heldout_clean_acc",
                 "heldout_pgd_acc", "heldout_robust_loss", "lr", "eps", "examples_per_s",
                 "epoch_time_s", "wall_time_s", "run_time_s", "weights_sha256"}


@pytest.fixture(scope="module")
def test_points():
    x, y = load_dataset("mnist", "test", DATA).tensors(n=300)
    return x, y


def _robust_acc(run: Path, x, y, eps: float) -> float:
    model = load_model(run)
    gen = torch.Generator().manual_seed(0)
    return pgd(model, x, y, LinfBall(eps), steps=10, generator=gen).accuracy


def test_each_adversary_beats_standard_training(tmp_path, test_points):
    accs = {}
    for adversary in ("none", "fgsm", "fgsm-rs", "pgd", "trades"):
        cfg = TrainConfig(**{**TINY, "adversary": adversary, "overfit_guard": False,
                             "eps": 0.2, "train_n": 2100, "epochs": 3})
        result = train(cfg, tmp_path / adversary)
        assert result.stopped == "completed"
        accs[adversary] = _robust_acc(tmp_path / adversary, *test_points, eps=0.2)
    for adversary in ("fgsm", "fgsm-rs", "pgd", "trades"):
        assert accs[adversary] > accs["none"] + 0.05, accs


def test_metrics_jsonl_has_documented_fields(tmp_path):
    train(TrainConfig(**TINY), tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert METRIC_FIELDS <= set(r), METRIC_FIELDS - set(r)
        assert 0 <= r["heldout_pgd_acc"] <= r["heldout_clean_acc"] + 1e-9 <= 1 + 1e-9
        assert 0 < r["wall_time_s"] <= r["run_time_s"]  # the run's time includes the steps
    # the last epoch's digest names the weights it left in model.safetensors
    assert records[-1]["weights_sha256"] == weights_sha256(
        load_file(tmp_path / "run" / "model.safetensors"))
    assert records[0]["weights_sha256"] != records[1]["weights_sha256"]
    for name in ("config.json", "model.json", "model.safetensors", "best.safetensors",
                 "checkpoint/state.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name


def _cli(out: Path, *extra: str) -> list[str]:
    flags = []
    for key, value in {**TINY, "epochs": 2, "train_n": 600, "checkpoint_every_steps": 2}.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return [sys.executable, "-m", "robustopt", "train", "--out", str(out), *flags, *extra]


def _counters(run: Path) -> dict | None:
    from safetensors import safe_open
    try:
        with safe_open(str(run / "checkpoint" / "state.safetensors"), "pt") as fh:
            return json.loads(fh.metadata()["state"])["counters"]
    except Exception:
        return None


@pytest.mark.parametrize("extra", [(), ("--ema-decay", "0.9"), ("--attack-smooth", "15")],
                         ids=["raw", "averaged", "smoothed-search"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, extra):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli(full, *extra), env=env, check=True, capture_output=True)
    rng = random.Random()
    target_step = rng.randrange(1, 19)  # 2 epochs of 10 steps; stop somewhere in them
    proc = subprocess.Popen(_cli(killed, *extra), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        c = _counters(killed)
        if c and c["epoch"] * 10 + c["step"] >= target_step:
            time.sleep(rng.uniform(0, 0.3))  # land at an arbitrary point, maybe mid-write
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([sys.executable, "-m", "robustopt", "train", "--resume",
                              str(killed)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("model.safetensors", "best.safetensors", "checkpoint/state.safetensors"):
        a, b = load_file(full / name), load_file(killed / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    drop = {"examples_per_s", "epoch_time_s", "wall_time_s", "run_time_s"}
    strip = [{k: v for k, v in r.items() if k not in drop}
             for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines())]
    again = [{k: v for k, v in r.items() if k not in drop}
             for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())]
    assert strip == again


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", "--out", str(out), "--data-dir", str(DATA), "--train-n", "200"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "learning rate must be > 0"),
    (["--lr", "-0.1"], "learning rate must be > 0"),
    (["--adversary", "pgd", "--attack-steps", "0"], "attack_steps >= 1"),
    (["--eps", "1.5"], "exceeds 1"),
    (["--eps", "-0.1"], "eps must be"),
    (["--preset", "mnist-nope"], "invalid choice"),
    (["--adversary", "pgdd"], "unknown adversary"),
    (["--adversary", "trades", "--trades-beta", "0"], "trades_beta must be > 0"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--attack-smooth", "-1"], "attack_smooth must be >= 0"),
    (["--attack-smooth-share", "0"], "attack_smooth_share must be in (0, 1]"),
    (["--train-eps", "1.5"], "train_eps: L-inf eps 1.5 exceeds 1"),
    (["--train-eps", "0"], "train_eps must be > 0"),
    (["--model-kwargs", '{"num_classes": 3}'], "model_kwargs cannot set num_classes"),
    (["--lr-gamma", "-0.1"], "lr_gamma must be > 0"),
    (["--seed", "-1"], "seed must be in [0, 2**32)"),
    (["--train-n", "0"], "train_n must be >= 1"),
    (["--milestones", "0.5,2"], "milestones are fractions"),
])
def test_bad_training_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    code = main(["train", "--out", str(tmp_path / "r"), "--data-dir", str(DATA), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_force_keeps_the_old_run_when_the_new_config_cannot_train(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    kept = {"config.json": '{"old": true}', "model.safetensors": "old weights"}
    for name, text in kept.items():
        (out / name).write_text(text)
    # a model sized for 20x20 images cannot take MNIST's 28x28: refused before --force acts
    code = main(["train", "--out", str(out), "--force", "--data-dir", str(DATA),
                 "--train-n", "200", "--model-kwargs", '{"input_size": 20}'])
    err = capsys.readouterr().err
    assert code == 2 and "rejected input" in err and err.count("\n") == 1, err
    assert {p.name: p.read_text() for p in out.iterdir()} == kept


def test_resuming_a_run_whose_config_was_edited_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(**{**TINY, "train_n": 200, "heldout_n": 50, "epochs": 1}), out)
    config = json.loads((out / "config.json").read_text())
    for edit, message in [({"model_kwargs": {"width": 2}}, "does not fit its config.json"),
                          ({"epochs": "5"}, "training setting epochs must be int")]:
        (out / "config.json").write_text(json.dumps({**config, **edit}))
        assert main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_run_being_trained_is_not_resumed_or_replaced_by_another_process(tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(**{**TINY, "train_n": 200, "heldout_n": 50, "epochs": 1}), out)
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    holder = RunDir(out)
    holder.lock()  # what a training process holds (an OS lock: gone if it is killed)
    try:
        for argv in (["train", "--resume", str(out)],
                     ["train", "--out", str(out), "--force", "--data-dir", str(DATA),
                      "--train-n", "200"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "being trained by another process" in err and err.count("\n") == 1, err
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files
    finally:
        holder.unlock()
    assert main(["train", "--resume", str(out)]) == 0  # free again


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # even root cannot create a directory below a file
    code = main(["train", "--out", str(blocker / "run"), "--data-dir", str(DATA)])
    err = capsys.readouterr().err
    assert code == 2 and "writable" in err and err.count("\n") == 1, err


def test_full_disk_is_a_clear_error(tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("model.safetensors") or str(dst).endswith("state.safetensors"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    code = main(["train", "--out", str(tmp_path / "r"), "--data-dir", str(DATA),
                 "--train-n", "300", "--heldout-n", "50", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left" in err and "free some disk space" in err, err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", "--out", str(out), "--data-dir", str(DATA), "--train-n", "600",
                 "--heldout-n", "50", "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30",
                 "--adversary", "none", "--schedule", "constant", "--checkpoint-every-steps",
                 "1"])
    err = capsys.readouterr().err
    assert code == 2 and "diverged" in err, err
    tensors = load_file(out / "checkpoint" / "state.safetensors")
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


@pytest.mark.parametrize("adversary", [{"adversary": "fgsm-rs"},
                                       {"adversary": "pgd", "attack_smooth": 15.0}],
                         ids=["fgsm-rs", "smoothed-pgd"])
def test_overfitting_guard_restores_best_and_stops(tmp_path, monkeypatch, adversary):
    from robustopt.train import loop

    accs = iter([0.6, 0.7, 0.1, 0.5])

    def fake_check(*args, **kwargs):
        return {"heldout_clean_acc": 0.9, "heldout_pgd_acc": next(accs),
                "heldout_robust_loss": 1.0}

    monkeypatch.setattr(loop, "heldout_check", fake_check)
    messages = []
    cfg = TrainConfig(**{**TINY, **adversary, "epochs": 4, "train_n": 300, "heldout_n": 50})
    result = train(cfg, tmp_path / "r", progress=lambda k, i: messages.append((k, i)))
    assert result.stopped == "overfitting"
    assert len(result.metrics) == 3 and result.metrics[-1]["overfitting_detected"]
    assert any(k == "warning" and "catastrophic overfitting" in i["message"]
               for k, i in messages)
    best, last = load_file(tmp_path / "r" / "best.safetensors"), load_file(
        tmp_path / "r" / "model.safetensors")
    assert all(torch.equal(best[k], last[k]) for k in best)
    # the collapsed epoch's record names the weights restored in its place
    assert result.metrics[-1]["weights_sha256"] == weights_sha256(last)


def test_training_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(5)
    expect = torch.rand(4)
    torch.manual_seed(5)
    cfg = TrainConfig(**{**TINY, "epochs": 1, "train_n": 300, "heldout_n": 50})
    train(cfg, tmp_path / "r")
    train(None, tmp_path / "r", resume=True)
    assert torch.equal(torch.rand(4), expect)


def test_resume_puts_back_the_best_weights_its_checkpoint_knows(tmp_path):
    """A kill after an epoch's weight files but before its checkpoint leaves best.safetensors
    ahead of the record; a GPU replay need not rewrite it, so resuming restores it."""
    from robustopt.modelfile import read_model_file, save_model
    run = tmp_path / "r"
    train(TrainConfig(**{**TINY, "epochs": 1, "train_n": 300, "heldout_n": 50}), run)
    state = load_file(run / "checkpoint" / "state.safetensors")
    best = {k[len("best."):]: v for k, v in state.items() if k.startswith("best.")}
    _, on_disk = read_model_file(run / "best.safetensors")
    assert best and weights_sha256(best) == weights_sha256(on_disk)
    stray = load_model(run)
    with torch.no_grad():
        for p in stray.parameters():
            p.add_(1.0)  # weights no record describes
    save_model(stray, run / "best.safetensors")
    train(None, run, resume=True)
    _, on_disk = read_model_file(run / "best.safetensors")
    assert weights_sha256(on_disk) == weights_sha256(best)


def test_config_roundtrip_and_unknown_preset():
    cfg = TrainConfig(**TINY)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    from robustopt.train import preset
    with pytest.raises(RobustOptError, match="unknown preset"):
        preset("nope")


def test_weight_average_follows_its_formula():
    from robustopt.train.ema import WeightAverage
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    expect = [p.detach().clone() for p in model.state_dict().values()]
    for t in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        average.update(model, t)
        d = min(0.5, (1 + t) / (10 + t))
        expect = [e.lerp(c, 1 - d) if c.is_floating_point() else c.clone()
                  for e, c in zip(expect, model.state_dict().values(), strict=True)]
    for got, want in zip(average.model.state_dict().values(), expect, strict=True):
        assert torch.allclose(got, want, atol=1e-6) if got.is_floating_point() \
            else torch.equal(got, want)
    assert all(not p.requires_grad for p in average.model.parameters())


def test_averaged_run_saves_and_checks_the_average(tmp_path):
    from robustopt.modelfile import read_model_file
    train(TrainConfig(**{**TINY, "ema_decay": 0.9}), tmp_path / "run")
    state = load_file(tmp_path / "run" / "checkpoint" / "state.safetensors")
    _, saved = read_model_file(tmp_path / "run" / "model.safetensors")
    assert saved.keys() == {k[len("average."):] for k in state if k.startswith("average.")}
    for key, value in saved.items():
        assert torch.equal(value, state[f"average.{key}"]), key
    assert any(not torch.equal(value, state[f"model.{key}"]) for key, value in saved.items())


def test_bad_ema_decay_is_a_one_line_error(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--ema-decay", "1.0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ema_decay must be in [0, 1)" in err[0], err


def test_train_eps_sets_the_adversary_radius_not_the_threat(tmp_path, test_points):
    """Training at a larger radius than the tested one: the adversary's points reach
    train_eps, while the held-out checks and the saved model keep eps."""
    from robustopt.train.adversary import adversarial_batch
    from robustopt.train.schedule import epsilon
    cfg = TrainConfig(**{**TINY, "adversary": "pgd", "eps": 0.1, "train_eps": 0.15,
                         "eps_ramp_epochs": 1.0})
    assert epsilon(cfg, 0.5) == pytest.approx(0.075) and epsilon(cfg, 1.5) == 0.15
    x, y = test_points[0][:20], test_points[1][:20]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    gen = torch.Generator().manual_seed(0)
    x_adv = adversarial_batch(cfg, model, x, y, epsilon(cfg, 2.0), gen, None)
    dist = (x_adv - x).abs().flatten(1).amax(1)
    assert (dist <= 0.15 + 1e-6).all() and (dist > 0.1 + 1e-3).any()
    result = train(cfg, tmp_path / "r")
    assert result.stopped == "completed"
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert metrics[-1]["eps"] == pytest.approx(0.15)
    spec = json.loads((tmp_path / "r" / "model.json").read_text())
    assert spec["threat"]["eps"] == pytest.approx(0.1)
