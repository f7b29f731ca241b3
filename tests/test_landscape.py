"""Loss-landscape experiments: closed-form checks on a linear model, real MNIST end to end.

A two-class linear model makes every quantity known in closed form: the margin loss is
``m(x) = g . x + c`` with ``g = w_other - w_true``, so along ``x + t d`` it is
``m(x) + t g . d``, on the plane ``m(x) + l1 g . d1 + l2 g . d2``, and every L-inf PGD
run (enough steps) ends at the unique maximiser, the corner ``x + eps sign(g)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustopt.cli as cli
from robustopt.cli import landscape_cmd, report_cmd
from robustopt.landscape import (
    Result,
    angle_degrees,
    chord_gap,
    fgsm_vs_pgd,
    loss_along_direction,
    loss_surface,
    plane_points,
    plot_direction,
    restart_losses,
    training_curves,
)
from robustopt.landscape.common import batched_loss
from robustopt.landscape.curves import iterations_per_epoch
from robustopt.landscape.direction import losses_along
from robustopt.losses import cross_entropy, margin
from robustopt.threat import LinfBall
from robustopt.train import TrainConfig, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PNG = b"\x89PNG\r\n\x1a\n"
EPS = 0.1


class _Linear(nn.Module):
    """Two logits, linear in the pixels: logit_k = w_k . x + b_k."""

    def __init__(self, d: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(2, d, generator=gen) * 0.1)
        self.b = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def _linear_case(n: int = 3):
    torch.manual_seed(0)
    model = _Linear(1 * 6 * 6).eval()
    x = 0.3 + 0.4 * torch.rand(n, 1, 6, 6)  # far enough from 0 and 1 that no clip binds
    y = torch.tensor([i % 2 for i in range(n)])
    g = (model.w[1 - y] - model.w[y]).detach()  # [n, d]: gradient of the margin loss
    m0 = margin(model(x).detach(), y)
    return model, x, y, g, m0


def _dot(g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return (g * d.flatten(1)).sum(1)


# ----------------------------------------------------------------------------- closed form


def test_loss_along_a_direction_is_the_closed_form():
    model, x, y, g, m0 = _linear_case()
    d = torch.rand_like(x) * 0.2 - 0.1
    t = torch.linspace(0, 1, 11)
    for name, fn, expect in (("margin", margin, lambda s: s),
                             ("ce", cross_entropy, torch.nn.functional.softplus)):
        loss, _ = losses_along(model, x, x + d, y, t, fn)
        closed = expect(m0[:, None] + t[None] * _dot(g, d)[:, None])
        assert loss.shape == (3, 11)
        assert torch.allclose(loss, closed, atol=1e-5), name


def test_direction_end_points_reach_the_corner_of_the_ball():
    model, x, y, g, m0 = _linear_case()
    res = loss_along_direction(model, x, y, LinfBall(EPS), points=21, steps=10, loss="margin")
    a = res.arrays
    assert a["t"].shape == (21,) and a["fgsm_loss"].shape == (3, 21)
    assert a["pgd_loss"].shape == (3, 21) and a["pgd_correct"].dtype == np.bool_
    best = (m0 + EPS * g.abs().sum(1)).numpy()  # the maximum over the ball: eps * ||g||_1
    np.testing.assert_allclose(a["fgsm_loss"][:, -1], best, atol=1e-5)
    np.testing.assert_allclose(a["pgd_loss"][:, -1], best, atol=1e-5)
    np.testing.assert_allclose(a["fgsm_loss"][:, 0], m0.numpy(), atol=1e-5)
    # linear in t, so no bump
    assert res.meta["summary"]["fgsm_bumps"] == 0
    assert np.allclose(np.diff(a["pgd_loss"], 2, axis=1), 0, atol=1e-4)


def test_angle_degrees_known_answers():
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ang = angle_degrees(a, b)
    assert ang[:3].tolist() == pytest.approx([90.0, 0.0, 180.0], abs=1e-4)
    assert math.isnan(ang[3])
    # L-inf corners: half the signs agree -> orthogonal
    u = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    v = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    assert float(angle_degrees(u, v)[0]) == pytest.approx(90.0)


def test_plane_grid_geometry_and_loss_are_the_closed_form():
    model, x, y, g, m0 = _linear_case(1)
    d1 = torch.rand_like(x[0]) * 0.2 - 0.1
    d2 = torch.rand_like(x[0]) * 0.2 - 0.1
    lam1 = torch.tensor([0.0, 0.5, 1.0])
    lam2 = torch.tensor([-0.5, 0.0, 1.0, 1.5])
    pts = plane_points(x[0], d1, d2, lam1, lam2, clip=False)
    assert pts.shape == (4, 3, 1, 6, 6)
    for i in range(4):
        for j in range(3):
            assert torch.allclose(pts[i, j], x[0] + lam1[j] * d1 + lam2[i] * d2)
    loss, _ = batched_loss(model, pts.reshape(12, 1, 6, 6), y.expand(12), margin)
    closed = m0[0] + lam1[None, :] * _dot(g, d1[None]) + lam2[:, None] * _dot(g, d2[None])
    assert torch.allclose(loss.view(4, 3), closed, atol=1e-5)


def test_chord_gap_known_answers():
    s = np.linspace(0, 1, 11)
    v = np.abs(s - 0.5)[None]            # a valley: 0.5 below the chord in the middle
    line = (2 * s + 1)[None]             # linear: on its chord
    hill = (1 - (s - 0.5) ** 2)[None]    # concave: above its chord
    assert chord_gap(v, s)[0] == pytest.approx(0.5)
    assert chord_gap(line, s)[0] == pytest.approx(0.0, abs=1e-12)
    assert chord_gap(hill, s)[0] == pytest.approx(0.0, abs=1e-12)


def test_surface_on_a_linear_model_has_one_maximum():
    model, x, y, g, m0 = _linear_case(2)
    res = loss_surface(model, x, y, LinfBall(EPS), grid=5, segment=7, steps=10, loss="margin")
    a = res.arrays
    assert a["loss"].shape == (2, 5, 5) and a["inside"].shape == (2, 5, 5)
    assert a["segment_loss"].shape == (2, 7) and a["angle_deg"].shape == (2,)
    # the maximiser is unique, so both PGD runs end at the same corner: angle 0
    np.testing.assert_allclose(a["angle_deg"], 0.0, atol=1e-3)
    top = (m0 + EPS * g.abs().sum(1)).numpy()
    np.testing.assert_allclose(a["segment_loss"], np.repeat(top[:, None], 7, 1), atol=1e-5)
    lam = a["lam"]
    closed = m0.numpy()[:, None, None] + (lam[None, :, None] + lam[None, None, :]) * (
        top - m0.numpy())[:, None, None]
    np.testing.assert_allclose(a["loss"], closed, atol=1e-4)
    assert a["inside"][:, 0, 0].all() and a["inside"][:, 0, -1].all()
    assert not a["inside"][:, -1, -1].any()  # x + d1 + d2 = x + 2 eps sign(g): outside


def test_restarts_concentrate_exactly_on_a_linear_model():
    model, x, y, g, m0 = _linear_case(2)
    res = restart_losses(model, x, y, LinfBall(EPS), restarts=300, steps=10, loss="margin",
                         chunk=128, trace=4)
    a = res.arrays
    assert a["final_loss"].shape == (2, 300) and a["final_loss"].dtype == np.float32
    assert a["final_correct"].shape == (2, 300) and a["trace"].shape == (2, 4, 11)
    top = (m0 + EPS * g.abs().sum(1)).numpy()
    np.testing.assert_allclose(a["final_loss"], np.repeat(top[:, None], 300, 1), atol=1e-5)
    assert (np.diff(a["trace"], axis=2) >= -1e-6).all()  # ascent on a linear function
    assert len(res.meta["points"]) == 2 and res.meta["points"][0]["time_s"] >= 0


def test_result_round_trips(tmp_path):
    res = Result("direction", {"summary": {"n": 1}, "settings": {}},
                 {"t": np.arange(3.0), "ok": np.array([True, False])})
    paths = res.save(tmp_path / "x" / "stem")
    assert [p.name for p in paths] == ["stem.json", "stem.npz"]
    back = Result.load(tmp_path / "x" / "stem")
    assert back.kind == "direction" and back.meta["summary"] == {"n": 1}
    np.testing.assert_array_equal(back.arrays["ok"], [True, False])
    assert json.loads(paths[0].read_text())["arrays"] == {"t": [3], "ok": [2]}


# ----------------------------------------------------------------------------- real MNIST


def test_direction_on_real_mnist_and_figure(trained_small_cnn, mnist_small, tmp_path):
    import sys

    import matplotlib

    backend = matplotlib.rcParams._get_backend_or_none()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    x, y = mnist_small[0][:6], mnist_small[1][:6]
    res = loss_along_direction(trained_small_cnn, x, y, LinfBall(0.3), points=11, steps=10)
    s = res.meta["summary"]
    assert res.arrays["fgsm_loss"].shape == (6, 11)
    assert s["pgd_end_loss_mean"] >= s["fgsm_end_loss_mean"]  # a standard model
    png = plot_direction(res, tmp_path / "d.png", title="small")
    assert png.read_bytes()[:8] == PNG
    # drawn on a private Agg canvas: the global backend is untouched, pyplot never imported
    assert matplotlib.rcParams._get_backend_or_none() == backend
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_eps_zero_fgsm_vs_pgd_equals_clean(trained_small_cnn, mnist_small):
    x, y = mnist_small[0][:20], mnist_small[1][:20]
    res = fgsm_vs_pgd({"a": trained_small_cnn}, x, y, LinfBall(0.0), steps=3)
    row = res.meta["models"]["a"]
    acc = row["accuracy"]
    assert acc["fgsm"] == acc["pgd"] == acc["fgsm_pred"] == acc["clean"]
    assert row["label_leaking"] is False
    assert res.arrays["accuracy"].shape == (1, 4)


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("landscape") / "std"
    train(TrainConfig(dataset="mnist", data_dir=str(DATA), train_n=600, heldout_n=100,
                      epochs=2, lr=3e-3, adversary="none", device="cpu", schedule="constant",
                      eval_steps=3), out)
    return out


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    extra = tuple(m for m in (landscape_cmd, report_cmd) if m not in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + extra)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_iterations_per_epoch_from_the_metrics(tiny_run):
    res = training_curves([tiny_run])
    run = res.meta["runs"][0]
    assert run["iterations_per_epoch"] == 5  # 500 training images, batch 100
    assert run["iteration"] == [5, 10] and len(run["heldout_pgd_acc"]) == 2
    assert iterations_per_epoch([], {"batch_size": 10}) is None


def test_cli_direction_surface_curves_write_data_and_png(tiny_run, monkeypatch, capsys):
    base = ("--data-dir", str(DATA), "--device", "cpu")
    code, out, err = _main(monkeypatch, capsys, "landscape", "direction", str(tiny_run),
                           "--n", "4", "--points", "9", "--steps", "5", *base)
    assert code == 0, err
    plots = tiny_run / "plots"
    with np.load(plots / "landscape_direction.npz") as z:
        assert z["fgsm_loss"].shape == (4, 9) and z["pgd_loss"].shape == (4, 9)
    meta = json.loads((plots / "landscape_direction.json").read_text())
    assert meta["kind"] == "direction" and meta["indices"] == [0, 1, 2, 3]
    assert (plots / "landscape_direction.png").read_bytes()[:8] == PNG
    assert "at the PGD point" in out

    code, out, err = _main(monkeypatch, capsys, "landscape", "surface", str(tiny_run),
                           "--indices", "3", "--grid", "7", "--segment", "9", "--steps", "5",
                           *base)
    assert code == 0, err
    with np.load(plots / "landscape_surface.npz") as z:
        assert z["loss"].shape == (1, 7, 7) and z["segment_loss"].shape == (1, 9)
        assert 0 <= float(z["angle_deg"][0]) <= 180
    assert "angle between the two PGD directions" in out
    assert (plots / "landscape_surface.png").is_file()

    code, out, err = _main(monkeypatch, capsys, "landscape", "curves", str(tiny_run))
    assert code == 0, err
    assert (plots / "landscape_curves.png").is_file() and "2 epoch(s)" in out


def test_cli_restarts_and_compare(tiny_run, tmp_path, monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "landscape", "restarts", str(tiny_run),
                           str(tiny_run), "--labels", "a,b", "--restarts", "150", "--chunk",
                           "64", "--steps", "5", "--trace", "3", "--indices", "0,1",
                           "--out", str(tmp_path), "--data-dir", str(DATA), "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "a_restarts.npz") as z:
        assert z["final_loss"].shape == (2, 150) and z["trace"].shape == (2, 3, 6)
    for name in ("a_restarts.png", "a_restarts_traces.png", "b_restarts.json",
                 "restarts_compare.png"):
        assert (tmp_path / name).is_file(), name
    assert "restarts/s" in out


def test_cli_fgsm_vs_pgd_trains_both(tmp_path, monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "landscape", "fgsm-vs-pgd", "--train-dir",
                           str(tmp_path), "--epochs", "1", "--train-n", "220", "--n", "30",
                           "--steps", "5", "--data-dir", str(DATA), "--device", "cpu")
    assert code == 0, err
    meta = json.loads((tmp_path / "fgsm_vs_pgd.json").read_text())
    assert meta["labels"] == ["fgsm-trained", "pgd-trained"]
    assert meta["models"]["fgsm-trained"]["adversary"] == "fgsm"
    assert (tmp_path / "fgsm_vs_pgd.png").is_file()
    assert "label leaking" in out
    # a second call reuses the trained runs
    code, out, _ = _main(monkeypatch, capsys, "landscape", "fgsm-vs-pgd", "--train-dir",
                         str(tmp_path), "--epochs", "1", "--train-n", "220", "--n", "10",
                         "--steps", "2", "--data-dir", str(DATA), "--device", "cpu")
    assert code == 0 and out.count("reusing") == 2


def test_cli_errors_are_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    model_file = tiny_run / "model.safetensors"
    code, _, err = _main(monkeypatch, capsys, "landscape", "direction", str(model_file),
                         "--n", "2", "--data-dir", str(DATA))
    assert code == 2 and "--out" in err and len(err.strip().splitlines()) == 1
    code, _, err = _main(monkeypatch, capsys, "landscape", "curves", str(tmp_path))
    assert code == 2 and "not a robustopt run directory" in err
    code, _, err = _main(monkeypatch, capsys, "landscape", "direction", str(tiny_run),
                         "--indices", "10000", "--data-dir", str(DATA))
    assert code == 2 and "past the 10000 test images" in err
