"""Release bundles: a trained model packaged for others to load, attack and score.

``export_bundle(run, out)`` writes a directory::

    out/
      model.safetensors   the weights with their robustopt spec (no pickle)
      model.json          architecture, dataset, normalisation, threat model, measured
                          clean/robust accuracy (from the run's eval.json), release info
      model.pt2           a torch.export program for third parties (plain PyTorch, no robustopt)
      README.md           how to load it either way
      MANIFEST.sha256     SHA-256 of every file above, in ``sha256sum`` format

``robustopt.load_model(out)`` reads ``model.json`` + ``model.safetensors`` after checking
every manifest entry (a mismatch is a ``ModelFileError``). It never opens ``model.pt2``:
``torch.export.load`` may unpickle parts of the archive, so the program is only for third
parties who trust the bundle's source. ``sha256sum -c MANIFEST.sha256`` checks a bundle
without robustopt.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import write_bytes_atomic, write_json_atomic
from .errors import ModelFileError, RobustOptError

__all__ = [
    "MANIFEST",
    "RELEASE_FORMAT",
    "bundle_record",
    "check_bundle",
    "export_bundle",
    "file_sha256",
    "is_bundle",
    "read_manifest",
]

RELEASE_FORMAT = "robustopt-release"
RELEASE_VERSION = 1
MANIFEST = "MANIFEST.sha256"
WEIGHTS, INFO, PROGRAM, README = "model.safetensors", "model.json", "model.pt2", "README.md"
# Files the robustopt loader may read from a bundle: each must be listed in the manifest.
_LOADER_FILES = (WEIGHTS, INFO, "best.safetensors")
_MAX_MANIFEST = 64 * 1024
_LINE = re.compile(r"^([0-9a-f]{64}) [ *]([A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
# Input shapes of the built-in datasets, for model files that do not record one.
_SHAPES = {"mnist": [1, 28, 28], "fashion-mnist": [1, 28, 28], "cifar10": [3, 32, 32]}

PT2_WARNING = (
    "model.pt2 is a torch.export archive for third parties; torch.export.load may unpickle "
    "parts of it, so load it only from a source you trust. robustopt never reads it: "
    "robustopt.load_model uses model.safetensors + model.json after checking MANIFEST.sha256."
)


# ----------------------------------------------------------------------------- hashing


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle: Path | str) -> dict[str, str]:
    """``{file name: sha256}`` from a bundle's ``MANIFEST.sha256`` (strictly parsed)."""
    path = Path(bundle) / MANIFEST
    try:
        size = path.stat().st_size
        if size > _MAX_MANIFEST:
            raise ModelFileError(f"{path} is {size} bytes, too large for a manifest; "
                                 "re-export the bundle")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ModelFileError(f"cannot read {path} ({err.strerror}); a release bundle needs its "
                             "manifest: re-export or re-download the bundle") from None
    except UnicodeDecodeError:
        raise ModelFileError(f"{path} is not UTF-8 text; re-export the bundle") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise ModelFileError(f"{path} line {number} is not '<sha256>  <file name>': "
                                 f"{line[:80]!r}; re-export the bundle")
        digest, name = match.groups()
        if name in entries or name == MANIFEST:
            raise ModelFileError(f"{path} lists {name} twice or lists itself; re-export the bundle")
        entries[name] = digest
    return entries


def is_bundle(path: Path | str) -> bool:
    """True for a directory that is (or claims to be) a release bundle."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / MANIFEST).exists():
        return True
    try:
        info = json.loads((path / INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    release = info.get("release") if isinstance(info, dict) else None
    return isinstance(release, dict) and release.get("format") == RELEASE_FORMAT


def check_bundle(path: Path | str) -> dict[str, str]:
    """Check every manifest entry of a bundle; return the manifest.

    Raises ``ModelFileError`` naming the first file that is missing, unlisted (for the files
    the loader reads) or whose SHA-256 differs from the manifest.
    """
    path = Path(path)
    entries = read_manifest(path)
    for name in _LOADER_FILES:
        if name not in entries and (path / name).exists():
            raise ModelFileError(f"bundle {path}: {name} is not listed in {MANIFEST}; "
                                 "re-export the bundle (its files must all be hashed)")
    for name in (WEIGHTS, INFO):
        if name not in entries:
            raise ModelFileError(f"bundle {path}: {MANIFEST} does not list {name}; "
                                 "re-export the bundle")
    for name, expected in entries.items():
        target = path / name
        if not target.is_file():
            raise ModelFileError(f"bundle {path} is incomplete: {name} (listed in {MANIFEST}) "
                                 "is missing; re-download the bundle")
        try:
            actual = file_sha256(target)
        except OSError as err:
            raise ModelFileError(f"cannot read {target} ({err.strerror}); check permissions"
                                 ) from None
        if actual != expected:
            raise ModelFileError(
                f"bundle {path}: {name} does not match {MANIFEST} (sha256 {actual[:16]}... "
                f"vs {expected[:16]}...); the file was changed or corrupted: re-download it")
    return entries


def bundle_record(path: Path | str) -> dict[str, Any]:
    """Check a bundle's manifest and return its ``model.json`` (plus ``manifest_sha256``,
    which identifies the bundle's exact content)."""
    path = Path(path)
    if not is_bundle(path):
        raise ModelFileError(f"{path} is not a release bundle (no {MANIFEST}); make one with "
                             "'robustopt export RUN --out DIR'")
    check_bundle(path)
    try:
        info = json.loads((path / INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"cannot read {path / INFO} ({type(err).__name__}); "
                             "re-export the bundle") from None
    if not isinstance(info, dict):
        raise ModelFileError(f"{path / INFO} must hold a JSON object; re-export the bundle")
    info["manifest_sha256"] = file_sha256(path / MANIFEST)
    return info


# ----------------------------------------------------------------------------- export


def _evaluation(run: Path) -> dict[str, Any] | None:
    """The headline numbers of a run's ``eval.json``, or None if it has none."""
    path = run / "eval.json"
    if not run.is_dir() or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RobustOptError(f"cannot read {path} ({type(err).__name__}); fix or delete it "
                             "and export again") from None
    if not isinstance(doc, dict):
        raise RobustOptError(f"{path} must hold a JSON object; fix or delete it")
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    return {
        "clean_accuracy": doc.get("clean_accuracy"),
        "robust_accuracy": doc.get("robust_accuracy"),
        "n": doc.get("n"),
        "split": settings.get("split", "test"),
        "suite": doc.get("suite"),
        "threat": doc.get("threat"),
        "robustopt_version": doc.get("robustopt_version"),
        "source": "eval.json",
    }


def _export_program(model: torch.nn.Module, shape: list[int], path: Path) -> None:
    """Write ``model`` as a torch.export program with a dynamic batch dimension, after
    checking in memory that the program computes the same logits as the model."""
    gen = torch.Generator().manual_seed(0)
    example = torch.rand((2, *shape), generator=gen)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # torch raises many types; report one line
        text = str(err).strip().splitlines()
        raise RobustOptError(f"torch.export could not trace the model ({type(err).__name__}: "
                             f"{text[0] if text else ''}); export needs a traceable model"
                             ) from None
    check = torch.rand((3, *shape), generator=gen)
    with torch.no_grad():
        want, got = model(check), program.module()(check)
    if not torch.allclose(want, got, atol=1e-5, rtol=1e-5):
        raise RobustOptError("the exported program's logits differ from the model's "
                             f"(max {float((want - got).abs().max()):.3g}); please report this")
    torch.export.save(program, str(path))


def _readme(info: dict[str, Any]) -> str:
    threat = info.get("threat") or {}
    acc = info.get("accuracy")
    lines = [
        f"# robustopt release: {info['arch']} on {info['dataset']}",
        "",
        f"Threat model: {threat.get('norm')} eps {threat.get('eps')} (pixel units, inputs "
        "in [0, 1]). Normalisation (mean/std in model.json) is inside the model.",
    ]
    if acc:
        lines.append(f"Measured on the first {acc.get('n')} {acc.get('split')} points: clean "
                     f"accuracy {acc.get('clean_accuracy')}, robust accuracy "
                     f"{acc.get('robust_accuracy')} ({acc.get('suite')} suite).")
    lines += [
        "",
        "## Load with robustopt (no pickle; checks MANIFEST.sha256)",
        "",
        "    import robustopt",
        "    model = robustopt.load_model('THIS_DIRECTORY')  # eval mode, [0, 1] NCHW -> logits",
        "",
        "## Load with plain PyTorch (no robustopt needed)",
        "",
        "    import torch",
        "    model = torch.export.load('THIS_DIRECTORY/model.pt2').module()",
        "    logits = model(x)  # x: float32 [N, C, H, W] in [0, 1]",
        "",
        f"Warning: {PT2_WARNING}",
        "",
        "Check the files without robustopt: `sha256sum -c MANIFEST.sha256`.",
        "",
        "## Challenge",
        "",
        "Submit adversarial examples as a .npy (or .npz with an `x_adv` array) of float32 "
        "[N, C, H, W] in [0, 1], aligned with the first N points of the test split, each "
        "within the threat model of its clean point:",
        "",
        "    robustopt challenge verify --model THIS_DIRECTORY --adv x_adv.npy",
        "    robustopt challenge submit --model THIS_DIRECTORY --adv x_adv.npy --name NAME "
        "--attack 'PGD-100, 10 restarts'",
        "",
    ]
    return "\n".join(lines)


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished bundle directory ``tmp`` to ``out`` (replacing it only if force)."""
    if out.exists() and not out.is_dir():
        raise RobustOptError(f"{out} exists and is not a directory: choose another --out")
    old: Path | None = None
    if out.is_dir():
        if any(out.iterdir()):
            if not force:
                raise RobustOptError(f"{out} already exists and is not empty: pass --force to "
                                     "replace it or choose another --out")
            old = out.with_name(f".{out.name}.old.{os.getpid()}.{secrets.token_hex(4)}")
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    model_path: Path | str,
    out: Path | str,
    *,
    which: str | None = None,
    force: bool = False,
    program: bool = True,
) -> dict[str, Any]:
    """Write a release bundle for a run directory (or model file) into ``out``.

    The bundle is assembled in a hidden sibling directory and renamed into place, so ``out``
    is either absent, the old bundle, or the complete new one. Returns its ``model.json``.
    """
    # modelfile imports this module
    from .modelfile import build_from_record, read_model_file, save_model

    src, out = Path(model_path), Path(out)
    home = (src if src.is_dir() else src.parent).resolve()
    if out.resolve() == home or out.resolve() in home.parents:
        raise RobustOptError(f"--out {out} holds the model being exported ({src}); replacing "
                             "it would delete the source: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:  # checked again when placing
        raise RobustOptError(f"{out} already exists and is not empty: pass --force to "
                             "replace it or choose another --out")
    record, tensors = read_model_file(src, which)
    model = build_from_record(record, tensors, src)
    del tensors
    dataset = record.get("dataset")
    threat = record.get("threat")
    if not isinstance(dataset, str) or not isinstance(threat, dict):
        raise RobustOptError(f"{src} does not record its dataset and threat model; export a "
                             "run directory made by 'robustopt train'")
    shape = record.get("input_shape") or _SHAPES.get(dataset.lower())
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(v, int) and v > 0 for v in shape)):
        raise RobustOptError(f"{src} does not record its input shape [C, H, W]; export a run "
                             "directory made by 'robustopt train'")
    spec_keys = ("arch", "kwargs", "mean", "std")
    carried = {k: record[k] for k in ("dataset", "input_shape", "classes", "threat", "epoch")
               if k in record}
    carried["input_shape"] = shape
    info: dict[str, Any] = {
        "release": {
            "format": RELEASE_FORMAT, "version": RELEASE_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "robustopt_version": __version__, "torch_version": torch.__version__,
            "source": src.resolve().name, "weights": WEIGHTS, "manifest": MANIFEST,
            "program": PROGRAM if program else None,
        },
        **{k: record[k] for k in spec_keys},
        **carried,
        "normalisation": {"mean": record["mean"], "std": record["std"], "inside_model": True,
                          "input_range": [0.0, 1.0]},
        "accuracy": _evaluation(src),
        "default_weights": "last",
        "challenge": {"split": "test", "format": "float32 [N, C, H, W] in [0, 1], .npy or "
                      ".npz with x_adv; the first N points of the test split"},
    }
    if program:
        info["torch_export"] = {"file": PROGRAM, "warning": PT2_WARNING,
                                "load": "torch.export.load('model.pt2').module()"}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
    except OSError as err:
        raise RobustOptError(f"cannot create {out} ({err.strerror}); choose a writable --out"
                             ) from None
    try:
        save_model(model, tmp / WEIGHTS, extra=carried)
        write_json_atomic(tmp / INFO, info)
        write_bytes_atomic(tmp / README, _readme(info).encode())
        if program:
            _export_program(model, shape, tmp / PROGRAM)
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = "".join(f"{file_sha256(tmp / n)}  {n}\n" for n in names)
        write_bytes_atomic(tmp / MANIFEST, manifest.encode())
        _place(tmp, out, force)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RobustOptError(f"could not write the bundle {out} ({err.strerror}); check "
                             "space and permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
