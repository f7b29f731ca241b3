"""``build_report``: one self-contained HTML page per run (or per group of runs).

Everything is drawn from what the run directory already holds: ``config.json``,
``model.json``, ``metrics.jsonl`` (training curves, redrawn here), ``eval.json`` (the
evaluation table, its sanity verdicts and the eps sweep) and every figure in
``plots/`` with the numbers saved beside it (``plots/NAME.json``). Images are embedded
as base64 ``data:`` URIs and the style sheet is inline, so the file opens offline and
can be mailed or archived as one file. Nothing is computed again and no model is loaded.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .atomic import write_bytes_atomic
from .errors import RobustOptError
from .landscape.curves import training_curves
from .landscape.plots import plot_curves
from .rundir import RunDir

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;
  background:#f6f7f9;color:#1d2330;font-size:14px;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:10px 0 4px}h2{font-size:19px;margin:30px 0 8px;
  border-bottom:2px solid #d9dde5;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#5b6475;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px 14px;
  min-width:120px}
.card .k{font-size:11px;color:#5b6475;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:18px;font-weight:600}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#16794a;font-weight:600}.FAIL{color:#b3261e;font-weight:700}.na{color:#7a8190}
img{max-width:100%;background:#fff;border:1px solid #dde1e8;border-radius:4px}
figure{margin:10px 0 22px}figcaption{font-size:12px;color:#3d4554;margin-top:4px}
.note{color:#5b6475;font-style:italic}
.grid{columns:2;column-gap:24px}.grid table{width:100%}
code{background:#eef0f4;padding:0 3px;border-radius:3px}
"""

_METRIC_COLS = ("epoch", "train_loss", "train_robust_acc", "heldout_clean_acc",
                "heldout_pgd_acc", "heldout_robust_loss", "lr", "eps", "examples_per_s",
                "epoch_time_s")


# ----------------------------------------------------------------------------- helpers


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, key: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if "acc" in key or key.endswith("fraction"):
            return f"{value:.2%}"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _img(data: bytes, alt: str) -> str:
    return (f'<img alt="{_e(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode("ascii")}">')


def _table(header: Sequence[str], rows: Sequence[Sequence[object]],
           num: Sequence[bool] | None = None) -> str:
    num = num or [False] * len(header)
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if n else f"<td>{c}</td>"
                         for c, n in zip(row, num, strict=True)) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cards(items: Sequence[tuple[str, object]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
        for k, v in items) + "</div>"


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------- sections


def _config_section(run: RunDir) -> str:
    cfg = run.read_config()
    items = [(k, _e(_fmt(v))) for k, v in cfg.items()]
    half = (len(items) + 1) // 2
    parts = [_table(("setting", "value"), items[:half]),
             _table(("setting", "value"), items[half:])]
    model = _read_json(run.path / "model.json") or {}
    model_rows = [(k, _e(_fmt(v))) for k, v in model.items() if k not in ("weights",)]
    out = "<h3>Training configuration (config.json)</h3>" + '<div class="grid">' + \
        "".join(parts) + "</div>"
    if model_rows:
        out += "<h3>Model (model.json)</h3>" + _table(("field", "value"), model_rows)
    return out


def _training_section(run: RunDir) -> str:
    records = run.read_metrics()
    if not records:
        return '<p class="note">No metrics.jsonl records: the run has not finished an epoch.</p>'
    curves = training_curves([run.path])
    png = plot_curves(curves, None)
    per = curves.meta["runs"][0]["iterations_per_epoch"]
    cols = [c for c in _METRIC_COLS if any(c in r for r in records)]
    rows = [[_e(_fmt(r.get(c), c)) for c in cols] for r in records]
    flags = [r for r in records if r.get("overfitting_detected")]
    note = (f'<p class="FAIL">catastrophic overfitting detected at epoch '
            f'{flags[0]["epoch"]}; the best weights were restored.</p>' if flags else "")
    return ("<figure>" + _img(png, "training curves") +
            f"<figcaption>Training curves from metrics.jsonl "
            f"({len(records)} epoch(s){f', {per:,} iterations per epoch' if per else ''}). "
            "Training loss/accuracy are on the adversarial training examples; held-out "
            "numbers use PGD on the held-out images at each epoch's end.</figcaption>"
            "</figure>" + note + _table(cols, rows, [True] * len(cols)))


def _verdict_rows(sanity: list[dict]) -> list[list[str]]:
    rows = []
    for v in sanity:
        status = {True: "ok", False: "FAIL", None: "n/a"}.get(v.get("passed"), "n/a")
        cls = {"ok": "ok", "FAIL": "FAIL", "n/a": "na"}[status]
        rows.append([f'<span class="{cls}">{status}</span>', _e(v.get("name", "")),
                     _e(v.get("detail", "")),
                     _e(v.get("likely_cause", "")) if v.get("passed") is False else ""])
    return rows


def _eval_section(run: RunDir) -> tuple[str, dict | None]:
    ev = _read_json(run.path / "eval.json")
    if ev is None:
        return (f'<p class="note">Not evaluated yet: run <code>robustopt evaluate '
                f'{_e(run.path)}</code> (add <code>--sweep 0.1,0.2,0.3</code> for the eps '
                "sweep).</p>", None)
    thr = ev.get("threat") or {}
    s = ev.get("settings") or {}
    out = _cards([("clean accuracy", _fmt(ev.get("clean_accuracy"), "acc")),
                  ("robust accuracy", _fmt(ev.get("robust_accuracy"), "acc")),
                  ("threat", f"{thr.get('norm', '?')} eps {_fmt(thr.get('eps'))}"),
                  ("suite", ev.get("suite", "?")), ("points", ev.get("n", "?"))])
    rows = [["clean", _e(ev.get("n", "")), "", "", _fmt(ev.get("clean_accuracy"), "acc"),
             "", ""]]
    for a in ev.get("attacks", []):
        name = a.get("name", "?") + (" (skipped)" if a.get("skipped") else "")
        rows.append([_e(name), _fmt(a.get("attacked")), _fmt(a.get("broke")),
                     _fmt(a.get("accuracy_on_attacked"), "acc"),
                     _fmt(a.get("cumulative_accuracy"), "acc"),
                     f"{a.get('time_s', 0):.1f} s", f"{a.get('passes', 0):,}"])
    out += _table(("attack", "attacked", "broke", "acc. on attacked", "cumulative acc.",
                   "time", "passes"), rows, [False] + [True] * 6)
    passes = ev.get("passes") or {}
    if passes:
        out += (f'<p class="meta">passes: {passes.get("spent", 0):,} spent of a '
                f'{passes.get("full_budget", 0):,} full budget '
                f'({passes.get("saved_fraction", 0):.1%} saved); seed {_e(ev.get("seed"))}; '
                f'{_fmt(ev.get("time_s"))} s; model {_e(s.get("model", ""))}, '
                f'{_e(s.get("dataset", ""))}/{_e(s.get("split", ""))}, first {_e(ev.get("n"))}'
                "</p>")
    sanity = ev.get("sanity") or []
    if sanity:
        failed = sum(1 for v in sanity if v.get("passed") is False)
        out += (f"<h3>Sanity checks ({failed} failed of {len(sanity)})</h3>" +
                _table(("verdict", "check", "detail", "likely cause"), _verdict_rows(sanity)))
    return out, ev


def _sweep_section(run: RunDir, ev: dict | None) -> str:
    sweep = (ev or {}).get("sweep")
    png_path = run.path / "plots" / "eval_sweep.png"
    if png_path.is_file():
        png = png_path.read_bytes()
    elif sweep:
        from .evaluate import plot_sweep

        with tempfile.TemporaryDirectory() as tmp:
            png = plot_sweep(sweep, Path(tmp) / "sweep.png").read_bytes()
    else:
        return ('<p class="note">No eps sweep: run <code>robustopt evaluate RUN --sweep '
                "0.1,0.2,0.3</code>.</p>")
    out = "<figure>" + _img(png, "eps sweep")
    if sweep:
        cap = ", ".join(f"eps {e:.3g}: {a:.1%}" for e, a in
                        zip(sweep.get("eps", []), sweep.get("robust_accuracy", []),
                            strict=False))
        verdict = sweep.get("sanity") or {}
        status = {True: "ok", False: "FAIL", None: "n/a"}.get(verdict.get("passed"), "n/a")
        out += (f"<figcaption>Robust accuracy against eps ({_e(sweep.get('suite', ''))}, "
                f"n={_e(sweep.get('n', ''))}): {_e(cap)}. Accuracy-vs-eps check: "
                f'<span class="{status if status != "n/a" else "na"}">{status}</span>'
                "</figcaption>")
    return out + "</figure>"


def landscape_caption(data: dict) -> str:
    """One or two sentences summarising a saved landscape result (its ``.json``)."""
    kind = data.get("kind")
    s = data.get("summary") or {}
    if kind == "direction":
        return (f"Loss along x + t(x_adv − x) for {s.get('n')} test points: mean loss at the "
                f"FGSM point {s.get('fgsm_end_loss_mean', 0):.3g}, at the PGD point "
                f"{s.get('pgd_end_loss_mean', 0):.3g} (PGD higher on "
                f"{s.get('pgd_end_above_fgsm_end', 0):.0%} of the points); accuracy FGSM "
                f"{s.get('fgsm_accuracy', 0):.0%}, PGD {s.get('pgd_accuracy', 0):.0%}; "
                f"FGSM curves with an early bump: {s.get('fgsm_bumps')}.")
    if kind == "restarts":
        st = data.get("settings") or {}
        parts = [f"#{i}: median {p['final_loss']['median']:.3g}, max "
                 f"{p['final_loss']['max']:.3g}, misclassified "
                 f"{p['misclassified_fraction']:.0%}"
                 for i, p in zip(data.get("indices") or range(10**6), data.get("points", []),
                                 strict=False)]
        return (f"Final PGD-{st.get('steps')} loss over {st.get('restarts', 0):,} random "
                f"restarts per point: " + "; ".join(parts) + ".")
    if kind == "restart_traces":
        st = data.get("settings") or {}
        return (f"Loss at every PGD iteration for the first {st.get('trace')} of the random "
                "restarts (cf. the seed's Figure 1).")
    if kind == "surface":
        parts = [f"angle {p['angle_deg']:.1f}°, ends {p['end_losses'][0]:.3g}/"
                 f"{p['end_losses'][1]:.3g}, middle {p['middle_loss']:.3g}"
                 for p in data.get("points", [])]
        return "Two PGD maxima from different starts: " + "; ".join(parts) + "."
    if kind == "fgsm_vs_pgd":
        parts = []
        for label in data.get("labels", []):
            a = data["models"][label]["accuracy"]
            parts.append(f"{label}: clean {a['clean']:.0%}, FGSM {a['fgsm']:.0%}, PGD "
                         f"{a['pgd']:.0%}" + (" (label leaking)" if
                                              data["models"][label]["label_leaking"] else ""))
        return "Accuracy under FGSM and PGD — " + "; ".join(parts) + "."
    if kind == "curves":
        return "Training curves of " + ", ".join(r["label"] for r in data.get("runs", [])) + "."
    return ""


def _figures_section(run: RunDir) -> str:
    plots = run.path / "plots"
    pngs = sorted(p for p in plots.glob("*.png") if p.name != "eval_sweep.png") \
        if plots.is_dir() else []
    if not pngs:
        return ('<p class="note">No landscape figures yet: e.g. <code>robustopt landscape '
                f"direction {_e(run.path)}</code>.</p>")
    out = []
    for p in pngs:
        stem = p.with_suffix("")
        data = _read_json(stem.with_name(stem.name + ".json"))
        if data is None and stem.name.endswith("_traces"):  # restarts_traces.png
            base = stem.with_name(stem.name[: -len("_traces")])
            data = _read_json(base.with_name(base.name + ".json"))
            if data is not None:
                data = {**data, "kind": "restart_traces"}
        caption = landscape_caption(data) if data else ""
        out.append("<figure>" + _img(p.read_bytes(), p.name) +
                   f"<figcaption><b>{_e(p.name)}</b>" +
                   (f" — {_e(caption)}" if caption else "") + "</figcaption></figure>")
    return "".join(out)


def _run_section(run: RunDir, heading: int = 2) -> str:
    cfg = run.read_config()
    records = run.read_metrics()
    last = records[-1] if records else {}
    model = _read_json(run.path / "model.json") or {}
    thr = model.get("threat") or {"norm": cfg.get("norm"), "eps": cfg.get("eps")}
    ev_html, ev = _eval_section(run)
    cards = [("model", cfg.get("model", "?")), ("dataset", cfg.get("dataset", "?")),
             ("adversary", cfg.get("adversary", "?")),
             ("threat", f"{thr.get('norm')} eps {_fmt(thr.get('eps'))}"),
             ("epochs", len(records))]
    if "heldout_pgd_acc" in last:
        cards += [("held-out clean", _fmt(last.get("heldout_clean_acc"), "acc")),
                  ("held-out PGD", _fmt(last.get("heldout_pgd_acc"), "acc"))]
    if ev is not None:
        cards.append(("eval robust acc.", _fmt(ev.get("robust_accuracy"), "acc")))
    h, hh = f"h{heading}", f"h{heading + 1}"
    return "".join([
        f"<{h}>Run {_e(run.path.name)}</{h}>",
        f'<p class="meta">{_e(run.path.resolve())}</p>',
        _cards(cards),
        f"<{hh}>Training curves</{hh}>", _training_section(run),
        f"<{hh}>Evaluation (eval.json)</{hh}>", ev_html,
        f"<{hh}>Robust accuracy against eps</{hh}>", _sweep_section(run, ev),
        f"<{hh}>Loss-landscape figures (plots/)</{hh}>", _figures_section(run),
        f"<{hh}>Configuration</{hh}>", _config_section(run),
    ])


def build_report(runs: Sequence[str | Path], title: str | None = None) -> str:
    """The HTML text of the report on one or several run directories."""
    if not runs:
        raise RobustOptError("give at least one run directory")
    opened = [RunDir.open(r) for r in runs]
    title = title or ("robustopt report: " + ", ".join(r.path.name for r in opened))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">generated {now} by robustopt {__version__}; everything below '
            "is drawn from the files in the run director"
            f"{'y' if len(opened) == 1 else 'ies'}.</p>"]
    if len(opened) > 1:
        body.append("<h2>Comparison</h2>")
        rows = []
        for r in opened:
            cfg, recs = r.read_config(), r.read_metrics()
            last = recs[-1] if recs else {}
            ev = _read_json(r.path / "eval.json") or {}
            rows.append([_e(r.path.name), _e(cfg.get("model")), _e(cfg.get("adversary")),
                         str(len(recs)), _fmt(last.get("heldout_clean_acc"), "acc"),
                         _fmt(last.get("heldout_pgd_acc"), "acc"),
                         _fmt(ev.get("clean_accuracy"), "acc"),
                         _fmt(ev.get("robust_accuracy"), "acc")])
        body.append(_table(("run", "model", "adversary", "epochs", "held-out clean",
                            "held-out PGD", "eval clean", "eval robust"), rows,
                           [False, False, False, True, True, True, True, True]))
        with_metrics = [r.path for r in opened if r.read_metrics()]
        if with_metrics:
            body.append("<figure>" + _img(plot_curves(training_curves(with_metrics), None),
                                          "training curves") +
                        "<figcaption>Training curves of all runs.</figcaption></figure>")
    for r in opened:
        body.append(_run_section(r, 2))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            + "".join(body) + "</main></body></html>\n")


def write_report(runs: Sequence[str | Path], out: str | Path | None = None,
                 title: str | None = None) -> Path:
    """Write the report: to ``out``, else (one run) to the run's ``report.html``."""
    text = build_report(runs, title)
    if out is None:
        if len(runs) != 1:
            raise RobustOptError("several runs make one combined report: pass --out FILE.html")
        return RunDir.open(runs[0]).write_report(text)
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    write_bytes_atomic(out, text.encode("utf-8"))
    return out


__all__ = ["build_report", "landscape_caption", "write_report"]
