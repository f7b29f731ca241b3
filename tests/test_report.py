"""``robustopt report``: one self-contained HTML file drawn from a run directory's files."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import robustopt.cli as cli
from robustopt.cli import landscape_cmd, report_cmd
from robustopt.report import build_report, landscape_caption, write_report
from robustopt.rundir import RunDir
from robustopt.train import TrainConfig, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    extra = tuple(m for m in (landscape_cmd, report_cmd) if m not in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + extra)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    """A tiny trained run with eval.json (and its sweep) written by ``robustopt evaluate``."""
    out = tmp_path_factory.mktemp("report") / "run"
    train(TrainConfig(dataset="mnist", data_dir=str(DATA), train_n=400, heldout_n=50,
                      epochs=2, lr=3e-3, adversary="none", device="cpu", schedule="constant",
                      eval_steps=2), out)
    code = cli.main(["evaluate", str(out), "--data-dir", str(DATA), "--n", "20", "--suite",
                     "quick", "--steps", "2", "--restarts", "1", "--no-sanity", "--sweep",
                     "0.1,0.3", "--device", "cpu"])
    assert code == 0
    return out


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                    text)]


def test_report_is_self_contained_and_has_every_section(evaluated_run, monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "landscape", "direction", str(evaluated_run),
                           "--n", "3", "--points", "5", "--steps", "2", "--data-dir",
                           str(DATA), "--device", "cpu")
    assert code == 0, err
    code, out, err = _main(monkeypatch, capsys, "report", str(evaluated_run))
    assert code == 0, err
    path = evaluated_run / "report.html"
    assert path.is_file() and str(path) in out
    text = path.read_text()
    for needle in ("Training curves", "Evaluation (eval.json)", "Sanity checks",
                   "Robust accuracy against eps", "landscape_direction.png",
                   "Training configuration", "small-mnist", "heldout_pgd_acc"):
        assert needle in text, needle
    images = _images(text)
    # training curves, sweep, direction figure: all real PNGs
    assert len(images) >= 3 and all(b.startswith(b"\x89PNG") for b in images)
    # nothing to fetch: no external scripts, styles or images
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    assert "<script" not in text


def test_report_without_eval_says_how_and_several_runs_need_out(tmp_path, evaluated_run,
                                                                  monkeypatch, capsys):
    bare = tmp_path / "bare"
    train(TrainConfig(dataset="mnist", data_dir=str(DATA), train_n=200, heldout_n=20,
                      epochs=1, adversary="none", device="cpu", eval_steps=1), bare)
    text = build_report([bare])
    assert "Not evaluated yet" in text and "robustopt evaluate" in text
    code, _, err = _main(monkeypatch, capsys, "report", str(bare), str(evaluated_run))
    assert code == 2 and "--out" in err
    out = write_report([bare, evaluated_run], tmp_path / "both.html", title="two runs")
    both = out.read_text()
    assert "Comparison" in both and "two runs" in both and both.count("<h2>Run ") == 2
    code, _, err = _main(monkeypatch, capsys, "report", str(tmp_path / "nothing"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_write_report_goes_through_rundir(evaluated_run):
    path = RunDir.open(evaluated_run).write_report("<html></html>")
    assert path == evaluated_run / "report.html" and path.read_text() == "<html></html>"
    write_report([evaluated_run])  # restore the real one for other readers


def test_captions_of_saved_results():
    cap = landscape_caption({"kind": "surface", "points": [
        {"angle_deg": 88.0, "end_losses": [3.0, 2.5], "middle_loss": 1.0}]})
    assert "88.0°" in cap and "middle 1" in cap
    assert landscape_caption({"kind": "other"}) == ""


def test_renders_in_headless_chromium(evaluated_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (optional render check)")
    html = evaluated_run / "report.html"
    if not html.is_file():
        write_report([evaluated_run])
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
                    f"--screenshot={shot}", "--window-size=1000,1400",
                    html.resolve().as_uri()], check=True, capture_output=True, timeout=60)
    assert shot.read_bytes()[:4] == b"\x89PNG"
