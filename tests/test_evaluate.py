"""The evaluator: worst case and provenance, survivor-only chaining, sanity checks, sweep, CLI.

Budgets are tiny (custom suites or ``budget=`` overrides) so the module runs in well under
a minute on a shared CPU. The "trap" models below are built to trip one sanity check each:
they look the input up in a memory of the clean points (no gradient through the lookup)
and put a hand-made loss landscape along one pixel.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustopt.cli as cli
from robustopt.cli import evaluate_cmd
from robustopt.errors import InputError, RobustOptError
from robustopt.evaluate import (
    AttackSpec,
    EvalResult,
    SanityConfig,
    check_sweep,
    evaluate,
    get_suite,
    plot_sweep,
    read_suite_file,
    sweep,
)
from robustopt.evaluate.shards import load_shard, merge_shards, shards_table
from robustopt.modelfile import read_model_file, save_model, weights_sha256
from robustopt.models import build_model
from robustopt.threat import L2Ball, LinfBall
from robustopt.train import TrainConfig, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = SanityConfig(probe_n=40)
TINY = [AttackSpec("pgd", "ce", steps=10, restarts=2), AttackSpec("pgd", "margin", steps=10),
        AttackSpec("square", "margin", queries=150)]


@pytest.fixture(scope="module")
def xy(mnist_small):
    x, y = mnist_small
    return x[:60], y[:60]


@pytest.fixture(scope="module")
def model(trained_small_cnn):
    return trained_small_cnn


@pytest.fixture(scope="module")
def normal_result(model, xy):
    x, y = xy
    return evaluate(model, x, y, LinfBall(0.05), TINY, sanity=SMALL, seed=1)


def verdict(result: EvalResult, name: str):
    (v,) = [v for v in result.verdicts if v.name == name]
    return v


# ----------------------------------------------------------------------------- models


class Scaled(nn.Module):
    """Logits times 1e4: the softmax saturates and cross-entropy gradients vanish."""

    def __init__(self, inner: nn.Module, k: float = 1e4) -> None:
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x):
        return self.inner(x) * self.k


class Quantised(nn.Module):
    """Rounds the input to 11 grey levels first: the input gradient is exactly zero."""

    def __init__(self, inner: nn.Module, levels: int = 10) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * self.levels) / self.levels)


class Trap(nn.Module):
    """Memorises clean points; the margin ``max_{j!=y} z_j - z_y`` of the nearest one's label
    is ``landscape(delta)``, ``delta = (x - x_clean)[pixel] / eps`` (in [-1, 1] in the ball)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, eps: float, landscape,
                 inner: nn.Module | None = None, mask_beyond: float | None = None) -> None:
        super().__init__()
        self.register_buffer("mem", x.clone())
        self.register_buffer("labels", y.clone())
        self.eps, self.landscape, self.inner, self.mask_beyond = eps, landscape, inner, mask_beyond

    def forward(self, x):
        with torch.no_grad():
            dist = (x[:, None] - self.mem[None]).flatten(2).abs().amax(dim=2)
            d, i = dist.min(dim=1)
        onehot = torch.nn.functional.one_hot(self.labels[i], 10).float()
        if self.inner is not None:  # the sweep trap: a real model near the data, masked beyond
            masked = (d > self.mask_beyond)[:, None]
            return torch.where(masked, 10 * onehot + 0 * x.sum(), self.inner(x))
        delta = (x - self.mem[i])[:, 0, 4, 4] / self.eps
        return -self.landscape(delta)[:, None] * onehot


def random_images(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    x[:, 0, 4, 4] = 0.5
    return x, torch.arange(n) % 10


def fgsm_landscape(d):  # gradient at the clean point leads right to a jump FGSM lands on;
    return torch.where(d >= 0.9, torch.ones_like(d), -10 + 5 * (d + 0.02).abs())  # PGD: 1/2


def steps_landscape(d):  # a small bump at 0.3 that only large steps jump over into [0.4, 0.6]
    up = -10 + 5 * (d + 1)
    dip = -3.5 - 5 * (d - 0.3)
    far = -4 - 5 * (d - 0.6)
    return torch.where(d <= 0.3, up, torch.where(d < 0.4, dip,
                                                 torch.where(d <= 0.6, torch.ones_like(d), far)))


def spread_landscape(d):  # two local maxima of very different height: -1 (left), -9 (right)
    return torch.where(d <= 0, -10 - 9 * d, -10 + d)


# ----------------------------------------------------------------------------- suites


def test_named_suites_have_autoattack_budgets():
    std = get_suite("standard")
    assert [(s.attack, s.steps) for s in std[:2]] == [("apgd", 100), ("apgd-t", 100)]
    assert std[1].n_targets == 9 and std[2].attack == "square" and std[2].queries == 5000
    strong = get_suite("strong", transfer=True)
    assert strong[-1].attack == "transfer" and any(s.n_targets == 3 for s in strong)
    assert len({s.step for s in strong if s.attack == "pgd" and not s.n_targets}) == 3
    quick = get_suite("quick", budget={"steps": 7, "restarts": 1})
    assert all(s.steps == 7 and s.restarts == 1 for s in quick)
    assert quick[0].name == "pgd-ce-7"
    assert get_suite([{"attack": "pgd"}, {"attack": "pgd"}])[1].name.endswith("#2")
    assert std[1].full_passes(10) == 2 + 9 * 101 and std[2].full_passes(10) == 2 + 4999


# ----------------------------------------------------------------------------- worst case


def test_worst_case_is_the_and_of_per_attack_masks(model, xy):
    x, y = xy
    full = evaluate(model, x, y, LinfBall(0.06), TINY, sanity=False, full_budget=True)
    masks = [~a.broke_mask for a in full.attacks]
    expect = full.clean_correct.clone()
    for m in masks:
        expect &= m
    assert torch.equal(full.robust, expect)
    per_attack = [float((full.clean_correct & m).float().mean()) for m in masks]
    assert full.robust_accuracy <= min(per_attack) + 1e-9
    assert full.attacks[-1].cumulative_accuracy == pytest.approx(full.robust_accuracy)
    assert all(a.attacked == len(y) for a in full.attacks)  # full budget: every point


def test_result_provenance_and_points(model, xy, normal_result):
    x, y = xy
    r = normal_result
    threat = LinfBall(0.05)
    assert bool(threat.contains(r.x_adv, x).all())
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    assert torch.equal(pred == y, r.robust)  # broken points really are misclassified
    assert torch.equal(r.robust, r.clean_correct & (r.margin < 0))
    names = {a.name for a in r.attacks}
    for i, who in enumerate(r.broken_by):
        if r.robust[i]:
            assert who is None
        elif not r.clean_correct[i]:
            assert who == "clean"
        else:
            assert who in names and bool(r.attack(who).broke_mask[i])
            if who.startswith("pgd-ce"):
                assert int(r.restart[i]) in (0, 1)
            if who.startswith("square"):
                assert int(r.query[i]) >= 2
    # survivor-only: each attack ran exactly on what the earlier ones left standing
    alive = r.clean_correct.clone()
    for a in r.attacks:
        assert torch.equal(a.attacked_mask, alive)
        alive &= ~a.broke_mask
    assert r.passes_spent < r.passes_full


def test_skipping_broken_points_changes_no_verdict(model, xy):
    x, y = xy
    specs = [AttackSpec("fgsm", "ce", random_start=False),
             AttackSpec("pgd", "ce", steps=8, random_start=False),
             AttackSpec("pgd", "margin", steps=8, restarts=2, random_start=False)]
    kw = dict(sanity=False, batch_size=25)  # several batches too
    chained = evaluate(model, x, y, LinfBall(0.07), specs, **kw)
    full = evaluate(model, x, y, LinfBall(0.07), specs, full_budget=True, **kw)
    assert torch.equal(chained.robust, full.robust)
    assert chained.broken_by == full.broken_by
    assert chained.passes_spent < full.passes_spent <= full.passes_full + 20


def test_json_table_npz_and_determinism(model, xy, normal_result, tmp_path):
    x, y = xy
    doc = normal_result.to_json()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["robust_accuracy"] == normal_result.robust_accuracy
    assert len(doc["per_example"]["broken_by"]) == len(y)
    table = normal_result.table()
    assert "robust accuracy" in table and "pgd-margin-10" in table and "sanity" in table
    normal_result.save_npz(tmp_path / "adv.npz")
    with np.load(tmp_path / "adv.npz", allow_pickle=False) as z:
        assert z["x_adv"].shape == tuple(x.shape)
        assert z["robust"].sum() == normal_result.robust.sum()
    again = evaluate(model, x, y, LinfBall(0.05), TINY, sanity=SMALL, seed=1)
    assert torch.equal(again.x_adv, normal_result.x_adv)
    assert again.broken_by == normal_result.broken_by


def test_standard_suite_runs_with_l2(model, xy):
    x, y = xy
    r = evaluate(model, x[:20], y[:20], L2Ball(1.0), "standard", sanity=False,
                 budget={"steps": 5, "queries": 30, "n_targets": 2})
    assert [a.name for a in r.attacks] == ["apgd-ce-5", "apgd-t-5", "square-30"]
    assert bool(L2Ball(1.0).contains(r.x_adv, x[:20]).all())
    hit = [i for i, b in enumerate(r.broken_by) if b == "apgd-t-5"]
    assert all(int(r.target[i]) not in (-1, int(y[i])) for i in hit)


# ----------------------------------------------------------------------------- sanity


def test_checks_stay_quiet_on_a_normal_model(normal_result):
    assert normal_result.failed_checks() == []
    applicable = {v.name for v in normal_result.verdicts if v.passed is not None}
    assert {"gradients", "huge-eps", "more-steps", "fgsm-vs-iterative", "ce-vs-margin",
            "black-box-vs-white-box", "restart-spread"} <= applicable


def test_saturated_softmax_is_flagged(model, xy):
    x, y = xy
    messages = []
    r = evaluate(Scaled(model), x, y, LinfBall(0.1), TINY[:2], sanity=SMALL,
                 progress=lambda kind, info: messages.append((kind, info["message"])))
    assert verdict(r, "ce-vs-margin").passed is False
    grad = verdict(r, "gradients")
    assert grad.passed is False and "saturation" in grad.likely_cause
    assert any(k == "warning" and "ce-vs-margin" in m for k, m in messages)


def test_quantised_input_gradient_masking_is_flagged(model, xy):
    x, y = xy
    r = evaluate(Quantised(model), x, y, LinfBall(0.1), TINY, sanity=SMALL)
    grad = verdict(r, "gradients")
    assert grad.passed is False and "non-differentiable" in grad.likely_cause
    assert verdict(r, "black-box-vs-white-box").passed is False
    assert verdict(r, "huge-eps").passed is False


def test_black_box_check_survives_white_box_attacks_run_after_square(model, xy):
    # A suite that appends PGD after Square (e.g. the training headline's) must still
    # compare Square with the white-box attacks before it, not report "not applicable".
    x, y = xy
    suite = TINY + [AttackSpec("pgd", "ce", steps=5)]
    assert [s.attack for s in suite][-2:] == ["square", "pgd"]
    r = evaluate(Quantised(model), x, y, LinfBall(0.1), suite, sanity=False)
    assert verdict(r, "black-box-vs-white-box").passed is False


def test_ce_vs_margin_check_survives_ce_attacks_run_after_margin_ones(model, xy):
    # The headline chain goes on to PGD-CE after its margin attacks: the margin attacks
    # must still be compared with the CE attack before them, not reported "n/a".
    x, y = xy
    suite = TINY[:2] + [AttackSpec("pgd", "ce", steps=5)]
    r = evaluate(Scaled(model), x, y, LinfBall(0.1), suite, sanity=False)
    assert verdict(r, "ce-vs-margin").passed is False


def test_fgsm_beating_pgd_is_flagged():
    x, y = random_images()
    trap = Trap(x, y, 0.1, fgsm_landscape)
    r = evaluate(trap, x, y, LinfBall(0.1), [AttackSpec("pgd", "ce", steps=10)],
                 sanity=SanityConfig(probe_n=20, short_steps=4, long_steps=8, restarts=1))
    v = verdict(r, "fgsm-vs-iterative")
    assert v.passed is False, v
    assert r.robust_accuracy == 0  # the sanity FGSM's points count like any attack's


def test_more_steps_helping_the_model_is_flagged():
    x, y = random_images()
    trap = Trap(x, y, 0.1, steps_landscape)
    r = evaluate(trap, x, y, LinfBall(0.1), [AttackSpec("pgd", "margin", steps=10)],
                 sanity=SanityConfig(probe_n=40, restarts=1, huge_steps=2))
    v = verdict(r, "more-steps")
    assert v.passed is False, v


def test_spread_of_restart_losses_is_flagged():
    x, y = random_images()
    trap = Trap(x, y, 0.1, spread_landscape)
    r = evaluate(trap, x, y, LinfBall(0.1), [AttackSpec("pgd", "margin", steps=5)],
                 sanity=SanityConfig(probe_n=40, short_steps=2, long_steps=10, huge_steps=2))
    v = verdict(r, "restart-spread")
    assert v.passed is False, v
    assert verdict(r, "more-steps").passed is True


class Detached(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


def test_a_model_without_input_gradient_gets_black_box_attacks_and_a_warning(model, xy):
    x, y = xy[0][:20], xy[1][:20]
    messages = []
    r = evaluate(Detached(model), x, y, LinfBall(0.1), TINY, sanity=SMALL,
                 progress=lambda kind, info: messages.append((kind, info["message"])))
    assert [a.skipped is not None for a in r.attacks] == [True, True, True, False]
    assert r.attacks[-1].attacked == int(r.clean_correct.sum())
    assert verdict(r, "gradients").passed is False
    assert any(k == "warning" and "white-box attacks skipped" in m for k, m in messages)


def test_zero_eps_is_clean_accuracy(model, xy):
    x, y = xy[0][:20], xy[1][:20]
    r = evaluate(model, x, y, LinfBall(0), TINY, sanity=SMALL)
    assert torch.equal(r.robust, r.clean_correct) and torch.equal(r.x_adv, x)
    assert r.passes_spent == 20 and all(v.passed is None for v in r.verdicts)


def test_sweep_data_plot_and_rising_accuracy(model, xy, tmp_path):
    x, y = xy
    spec = [AttackSpec("pgd", "margin", steps=10)]
    data = sweep(model, x[:40], y[:40], "linf", [0.1, "1/50", 0.05], spec)
    assert data["eps"] == [0.02, 0.05, 0.1] and len(data["robust_accuracy"]) == 3
    assert data["sanity"]["passed"] is True
    json.dumps(data, allow_nan=False)
    png = plot_sweep(data, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a model that masks its gradient beyond 0.15 of the data: accuracy rises with eps
    masked = Trap(x[:40], y[:40], 0.1, None, inner=model, mask_beyond=0.15)
    rising = sweep(masked, x[:40], y[:40], "linf", [0.1, 0.3], spec)
    assert rising["sanity"]["passed"] is False
    r = evaluate(model, x[:40], y[:40], LinfBall(0.1), spec, sanity=False, sweep_result=rising)
    assert verdict(r, "accuracy-vs-eps").passed is False
    assert check_sweep(None).passed is None


# ----------------------------------------------------------------------------- bad input


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1)


class NaNModel(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), math.nan)


@pytest.mark.parametrize("case,match", [
    ("shape", "logits of shape"), ("nan", "NaN or inf"), ("labels", "class 12"),
    ("suite", "unknown suite"), ("budget", "unknown budget"), ("spec", "unknown attack"),
    ("transfer-missing", "no source model"), ("transfer-classes", "another dataset"),
    ("transfer-shape", "does not fit"), ("seed", "seed"), ("images", r"outside \[0, 1\]"),
    ("p_init", r"p_init must be a number in \(0, 1\]"),
])
def test_bad_input_is_one_line_error(model, xy, case, match):
    x, y = xy[0][:4], xy[1][:4]
    kw: dict = {"suite": [AttackSpec("pgd", steps=2)], "sanity": False}
    m = model
    if case == "shape":
        m = Flat()
    elif case == "nan":
        m = NaNModel()
    elif case == "labels":
        y = y.clone()
        y[0] = 12
    elif case == "suite":
        kw["suite"] = "ultimate"
    elif case == "budget":
        kw.update(suite="quick", budget={"iterations": 3})
    elif case == "spec":
        kw["suite"] = [{"attack": "cw"}]
    elif case == "p_init":  # a suite file's string: was a raw ValueError from float()
        kw["suite"] = [{"attack": "square", "p_init": "x"}]
    elif case == "transfer-missing":
        kw["suite"] = [AttackSpec("transfer", steps=2)]
    elif case == "transfer-classes":
        kw["transfer_from"] = build_model("small-mnist", mean=[0.1], std=[0.3], num_classes=5)
    elif case == "transfer-shape":
        kw["transfer_from"] = build_model("small-mnist", mean=[0.1] * 3, std=[0.3] * 3,
                                          in_channels=3, input_size=32)
    elif case == "seed":
        kw["seed"] = -1
    elif case == "images":
        x = x * 255
    with pytest.raises(InputError, match=match) as err:
        evaluate(m, x, y, LinfBall(0.1), **kw)
    assert "\n" not in str(err.value)


def test_bad_eps_is_refused(model, xy):
    with pytest.raises(RobustOptError, match="exceeds 1"):
        sweep(model, xy[0][:4], xy[1][:4], "linf", [0.1, 2.0], "quick")
    with pytest.raises(RobustOptError, match="eps"):
        LinfBall(-0.1)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    train(TrainConfig(dataset="mnist", data_dir=str(DATA), train_n=300, heldout_n=50, epochs=1,
                      adversary="none", device="cpu", eps=0.1, eval_steps=2), out)
    return out


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    if evaluate_cmd not in cli.COMMANDS:  # until the command is registered in cli/__init__
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, evaluate_cmd))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_eval_json(run_dir, tmp_path, monkeypatch, capsys):
    adv = tmp_path / "adv.npy"
    args = ("evaluate", str(run_dir), "--data-dir", str(DATA), "--n", "30", "--suite", "quick",
            "--steps", "5", "--restarts", "1", "--device", "cpu", "--seed", "3")
    code, out, err = _main(monkeypatch, capsys, *args, "--save-adv", str(adv),
                           "--sweep", "0.05,0.1")
    assert code == 0, err
    assert "robust accuracy" in out and "pgd-ce-5" in err  # table on stdout, progress on stderr
    doc = json.loads((run_dir / "eval.json").read_text())
    assert doc["seed"] == 3 and doc["test_indices"] == {"split": "test", "start": 0, "stop": 30}
    assert doc["settings"]["eps"] == 0.1 and doc["settings"]["dataset"] == "mnist"  # from model
    assert doc["robustopt_version"] and doc["passes"]["spent"] < doc["passes"]["full_budget"]
    assert [a["name"] for a in doc["attacks"]][:2] == ["pgd-ce-5", "pgd-margin-5"]
    assert {v["name"] for v in doc["sanity"]} >= {"gradients", "accuracy-vs-eps"}
    assert doc["sweep"]["eps"] == [0.05, 0.1] and (run_dir / doc["sweep"]["plot"]).is_file()
    saved = np.load(adv, allow_pickle=False)
    assert saved.shape == (30, 1, 28, 28) and saved.dtype == np.float32
    code, _, err = _main(monkeypatch, capsys, *args)  # same seed, same answer
    assert code == 0, err
    again = json.loads((run_dir / "eval.json").read_text())
    assert again["per_example"] == doc["per_example"] and again["passes"] == doc["passes"]
    assert [a["broke"] for a in again["attacks"]] == [a["broke"] for a in doc["attacks"]]


def test_suite_file_runs_named_suites_and_extra_attacks(run_dir, tmp_path, monkeypatch,
                                                        capsys):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(["quick", {"attack": "pgd", "loss": "margin", "steps": 4,
                                           "restarts": 2, "step": 0.1}]))
    expanded = get_suite(read_suite_file(suite))
    assert [s.name for s in expanded] == [s.name for s in get_suite("quick")] + [
        "pgd-margin-4x2@0.1eps"]
    out_json = tmp_path / "e.json"
    code, out, err = _main(monkeypatch, capsys, "evaluate", str(run_dir), "--data-dir",
                           str(DATA), "--n", "20", "--suite", str(suite), "--steps", "3",
                           "--no-sanity", "--device", "cpu", "--out", str(out_json))
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert doc["settings"]["suite_file"] == str(suite)
    assert [a["name"] for a in doc["attacks"]] == ["pgd-ce-3x3", "pgd-margin-3x3",
                                                   "pgd-margin-3x2@0.1eps"]


@pytest.mark.parametrize("text,match", [
    ("{not json", "is not valid JSON"),
    ('{"attack": "pgd"}', "must hold a JSON list"),
    ('[{"attack": "pgd", "steps": 0}]', "steps must be an integer >= 1"),
    ('["nonesuch"]', "unknown suite 'nonesuch'"),
    ("[]", "attack list is empty"),
])
def test_bad_suite_files_are_one_line_errors(run_dir, tmp_path, monkeypatch, capsys, text,
                                             match):
    suite = tmp_path / "suite.json"
    suite.write_text(text)
    code, _, err = _main(monkeypatch, capsys, "evaluate", str(run_dir), "--data-dir",
                         str(DATA), "--suite", str(suite), "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and match in err, err
    code, _, err = _main(monkeypatch, capsys, "evaluate", str(run_dir), "--suite", "fast")
    assert code == 2 and "unknown suite 'fast'" in err and ".json" in err, err


def _shard(run_dir, tmp_path, monkeypatch, capsys, start: int, n: int) -> Path:
    out = tmp_path / f"eval-{start}-{start + n}.json"
    code, _, err = _main(monkeypatch, capsys, "evaluate", str(run_dir), "--data-dir", str(DATA),
                         "--start", str(start), "--n", str(n), "--suite", "quick", "--steps",
                         "3", "--restarts", "1", "--no-sanity", "--device", "cpu",
                         "--batch-size", "20", "--out", str(out))
    assert code == 0, err
    return out


def test_aligned_shards_merge_into_exactly_the_whole_evaluation(run_dir, tmp_path, monkeypatch,
                                                                capsys):
    whole = load_shard(_shard(run_dir, tmp_path, monkeypatch, capsys, 0, 60))
    parts = [_shard(run_dir, tmp_path, monkeypatch, capsys, s, 20) for s in (40, 0, 20)]
    docs = [(p, load_shard(p)) for p in parts]
    assert docs[0][1]["test_indices"] == {"split": "test", "start": 40, "stop": 60}
    digest = weights_sha256(read_model_file(run_dir)[1])
    assert {d["settings"]["weights_sha256"] for _, d in docs} == {digest}
    merged = merge_shards(docs)  # given out of order: merged by range
    assert merged["n"] == 60 and merged["test_indices"] == {
        "split": "test", "start": 0, "stop": 60, "gaps": []}
    # shards on batch boundaries draw the whole run's randomness for the same images, so
    # every per-example record (verdicts, provenance, margins) and every count agree
    assert merged["per_example"] == whole["per_example"]
    assert merged["robust_accuracy"] == pytest.approx(whole["robust_accuracy"])
    assert [(a["name"], a["attacked"], a["broke"], a["passes"]) for a in merged["attacks"]] == [
        (a["name"], a["attacked"], a["broke"], a["passes"]) for a in whole["attacks"]]
    assert "60 test points (0..59) from 3 shard(s)" in shards_table(merged)


def test_weights_digest_names_the_weights_not_the_file(tmp_path):
    model = build_model("small-mnist", mean=[0.1], std=[0.3])
    save_model(model, tmp_path / "a.safetensors", extra={"dataset": "mnist"})
    save_model(model, tmp_path / "b.safetensors", extra={"dataset": "mnist", "note": "copy"})
    a, b = (weights_sha256(read_model_file(tmp_path / f)[1]) for f in ("a.safetensors",
                                                                       "b.safetensors"))
    assert a == b and len(a) == 64
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    save_model(model, tmp_path / "c.safetensors", extra={"dataset": "mnist"})
    assert weights_sha256(read_model_file(tmp_path / "c.safetensors")[1]) != a
    half = {k: v.to(torch.bfloat16) for k, v in read_model_file(tmp_path / "a.safetensors")[1]
            .items()}
    assert weights_sha256(half) != a  # a bf16 file is another file, even if loaded as fp32


def test_merging_refuses_shards_of_different_evaluations(run_dir, tmp_path, monkeypatch,
                                                         capsys):
    a_path = _shard(run_dir, tmp_path, monkeypatch, capsys, 0, 10)
    a = load_shard(a_path)
    b = load_shard(_shard(run_dir, tmp_path, monkeypatch, capsys, 5, 10))
    c = load_shard(_shard(run_dir, tmp_path, monkeypatch, capsys, 30, 10))
    with pytest.raises(RobustOptError, match="overlap"):
        merge_shards([(Path("a"), a), (Path("b"), b)])
    assert merge_shards([(Path("a"), a), (Path("c"), c)])["test_indices"]["gaps"] == [[10, 30]]
    older = json.loads(json.dumps(c))  # written before specs had a "smooth" field
    for row in older["attacks"]:
        assert row["spec"].pop("smooth") is None
    assert merge_shards([(Path("a"), a), (Path("o"), older)])["n"] == 20

    def changed(edit) -> dict:
        doc = json.loads(json.dumps(c))
        edit(doc)
        return doc

    for edit, match in [
        (lambda d: d["settings"].update(weights_sha256="0" * 64), "different weights"),
        (lambda d: d["settings"].update(eps=0.2), "differ in 'eps'"),
        (lambda d: d["attacks"][0]["spec"].update(steps=99), "different attack chains"),
    ]:
        with pytest.raises(RobustOptError, match=match):
            merge_shards([(Path("a"), a), (Path("o"), changed(edit))])
    bad = tmp_path / "bad.json"
    for doc, match in [
        ([1, 2], "not a JSON object"),
        (changed(lambda d: d.pop("attacks")), "'attacks' missing"),
        (changed(lambda d: d["per_example"]["robust"].pop()), "do not match its range"),
        (changed(lambda d: d["test_indices"].update(stop=39)), "do not match its range"),
        (merge_shards([(Path("a"), a), (Path("c"), c)]), "is itself a merge"),
    ]:
        bad.write_text(json.dumps(doc))
        with pytest.raises(RobustOptError, match=match):
            load_shard(bad)
    script = Path(__file__).resolve().parents[1] / "experiments" / "merge_eval_shards.py"
    proc = subprocess.run([sys.executable, str(script), str(a_path), str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is itself a merge" in proc.stderr


def test_a_shard_of_a_run_directory_needs_its_own_output(run_dir, monkeypatch, capsys):
    before = (run_dir / "eval.json").read_bytes() if (run_dir / "eval.json").exists() else None
    code, _, err = _main(monkeypatch, capsys, "evaluate", str(run_dir), "--data-dir",
                         str(DATA), "--start", "100", "--n", "10", "--suite", "quick")
    assert code == 2 and err.count("\n") == 1 and "pass --out FILE.json" in err, err
    after = (run_dir / "eval.json").read_bytes() if (run_dir / "eval.json").exists() else None
    assert after == before


@pytest.mark.parametrize("extra,match", [
    (("--n", "20000"), "runs past the 10000"),
    (("--start", "9990", "--n", "20", "--out", "never-written.json"),
     "use --start + --n <= 10000"),
    (("--start", "-1"), "expected a whole number >= 0"),
    (("--eps", "1.5"), "exceeds 1"),
    (("--transfer-from", "OTHER"), "trained on fashion-mnist"),
    (("--sweep", "0.1,3"), "exceeds 1"),
])
def test_cli_errors_are_one_line(run_dir, tmp_path, monkeypatch, capsys, extra, match):
    if "OTHER" in extra:
        other = tmp_path / "other.safetensors"
        save_model(build_model("small-mnist", mean=[0.2], std=[0.35]), other,
                   extra={"dataset": "fashion-mnist"})
        extra = tuple(str(other) if e == "OTHER" else e for e in extra)
    code, out, err = _main(monkeypatch, capsys, "evaluate", str(run_dir), "--data-dir",
                           str(DATA), "--suite", "quick", "--device", "cpu", *extra)
    assert code == 2
    assert err.count("\n") == 1 and match in err, err


def test_single_step_gap_flags_fgsm_only_robustness():
    from robustopt.evaluate import sanity as S

    cfg = S.SanityConfig()
    masked = S.ProbeData(n=100, fgsm_broken=5, restart_broken=[90])    # FGSM 95%, PGD 10%
    healthy = S.ProbeData(n=100, fgsm_broken=8, restart_broken=[15])   # FGSM 92%, PGD 85%
    verdict = S.check_single_step(masked, cfg)
    assert verdict.passed is False and "single-step" in verdict.likely_cause
    assert S.check_single_step(healthy, cfg).passed is True
    assert S.check_single_step(None, cfg).passed is None


def test_cpu_evaluation_holds_conv_weights_channels_last_and_restores_them(model, mnist_small):
    x, y = mnist_small[0][:60], mnist_small[1][:60]
    suite = [{"attack": "pgd", "steps": 10}, {"attack": "square", "queries": 100}]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    seen: list[bool] = []  # per pass: ran on channels-last weights
    hooks = [c.register_forward_pre_hook(
        lambda m, _: seen.append(not m.weight.is_contiguous())) for c in convs]
    try:
        fast = evaluate(model, x, y, LinfBall(0.3), suite, sanity=False)
        fast_seen, seen[:] = list(seen), []
        default = evaluate(model, x, y, LinfBall(0.3), suite, sanity=False,
                           channels_last=False)
    finally:
        for h in hooks:
            h.remove()
    assert convs and fast_seen and all(fast_seen)
    assert seen and not any(seen)
    assert fast.settings["weights_channels_last"] is True  # recorded: rounding follows it
    assert default.settings["weights_channels_last"] is False
    for name, value in model.state_dict().items():
        assert value.is_contiguous() and torch.equal(value, before[name]), name
    # the same math up to float rounding, which can tip a random search on a borderline point
    assert abs(int(fast.robust.sum()) - int(default.robust.sum())) <= 1
