"""The command line: `robustopt attack` end to end, and one-line errors with exit code 2."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustopt.cli import main
from robustopt.modelfile import save_model
from robustopt.models import build_model
from robustopt.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    train(TrainConfig(dataset="mnist", data_dir=str(DATA), train_n=3000, heldout_n=100,
                      epochs=2, lr=3e-3, adversary="none", device="cpu", schedule="constant"),
          out)
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _accs(out: str) -> tuple[float, float]:
    lines = {line.split()[0]: line for line in out.splitlines() if line}
    clean = float(lines["clean"].split()[2].rstrip("%"))
    adv = float(lines["adversarial"].split()[2].rstrip("%"))
    return clean, adv


def test_attack_breaks_a_standard_model_and_saves_points(run_dir, tmp_path, capsys):
    adv_file = tmp_path / "adv.npy"
    code, out, err = _run(capsys, "attack", str(run_dir), "--data-dir", str(DATA), "--n", "200",
                          "--eps", "0.3", "--steps", "20", "--save-adv", str(adv_file))
    assert code == 0, err
    clean, adv = _accs(out)
    assert clean > 70 and adv < 5, out
    saved = np.load(adv_file, allow_pickle=False)
    assert saved.shape == (200, 1, 28, 28) and saved.dtype == np.float32
    assert saved.min() >= 0 and saved.max() <= 1


def test_eps_fraction_and_zero_eps_equals_clean(run_dir, capsys):
    code, out, _ = _run(capsys, "attack", str(run_dir), "--data-dir", str(DATA), "--n", "100",
                        "--eps", "0/255", "--steps", "5")
    assert code == 0
    clean, adv = _accs(out)
    assert clean == adv


def test_transfer_and_fgsm_run(run_dir, capsys):
    code, out, err = _run(capsys, "attack", str(run_dir), "--data-dir", str(DATA), "--n", "100",
                          "--eps", "8/255", "--attack", "fgsm", "--transfer-from", str(run_dir))
    assert code == 0 and "transferred" in out, err


def _bad_model_files(tmp_path: Path) -> dict[str, Path]:
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a model at all" * 10)
    cifar = tmp_path / "cifar.safetensors"
    save_model(build_model("small-mnist", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                           in_channels=3), cifar, extra={"dataset": "mnist"})
    return {"pickle": pickled, "garbage": garbage, "channels": cifar}


@pytest.mark.parametrize("case, message", [
    ("pickle", "pickle"),
    ("garbage", "garbage.safetensors"),
    ("channels", "channel"),
])
def test_bad_model_files_are_one_line_errors(tmp_path, capsys, case, message):
    path = _bad_model_files(tmp_path)[case]
    code, _, err = _run(capsys, "attack", str(path), "--data-dir", str(DATA), "--n", "10",
                        "--eps", "0.1")
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["--eps", "-0.1"], "eps must be"),
    (["--eps", "2"], "exceeds 1"),
    (["--eps", "abc"], "cannot read eps"),
    (["--n", "20000"], "exceeds the 10000 examples"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--norm", "l7"], "unknown norm"),
    (["--target", "12"], "not a class"),
])
def test_bad_arguments_are_one_line_errors(run_dir, capsys, argv, message):
    code, _, err = _run(capsys, "attack", str(run_dir), "--data-dir", str(DATA), "--n", "10",
                        *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def _copy_mnist(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(DATA / "MNIST", root / "MNIST")
    return root


def test_missing_and_truncated_data_files(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBUSTOPT_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "attack", str(run_dir), "--data-dir", str(empty), "--n", "10")
    assert code == 2 and "MNIST" in err and err.count("\n") == 1, err
    root = _copy_mnist(tmp_path)
    images = root / "MNIST" / "t10k-images-idx3-ubyte.gz"
    images.chmod(0o644)
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    code, _, err = _run(capsys, "attack", str(run_dir), "--data-dir", str(root), "--n", "10")
    assert code == 2 and "t10k-images" in err and err.count("\n") == 1, err


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    code, _, err = _run(capsys, "attack")
    assert code == 2 and "error" in err


def test_an_unexpected_os_error_is_one_line_with_exit_code_2(monkeypatch, capsys):
    from robustopt.cli import report_cmd

    def fails(args):
        raise PermissionError(13, "Permission denied", "/somewhere/report.html")

    monkeypatch.setattr(report_cmd, "run", fails)
    assert main(["report", "runs/anything"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied (/somewhere/report.html)" in err, err
