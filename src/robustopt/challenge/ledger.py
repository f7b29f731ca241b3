"""The challenge leaderboard: a JSON ledger of accepted submissions, and its Markdown table.

Appending is a read-modify-write under an exclusive ``fcntl`` lock on a sibling lock file
(``LEDGER.lock``), finished by an atomic rename, so concurrent ``submit`` processes never
lose an entry and a reader never sees a torn file. A submission whose content hash is
already on the ledger for the same model is refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..errors import RobustOptError

__all__ = [
    "DEFAULT_LEDGER",
    "DuplicateSubmission",
    "LEDGER_FORMAT",
    "append_entry",
    "check_names",
    "make_entry",
    "read_ledger",
    "render_board",
]

LEDGER_FORMAT = "robustopt-challenge-ledger"
LEDGER_VERSION = 1
DEFAULT_LEDGER = "challenge-ledger.json"
_MAX_NAME, _MAX_ATTACK = 100, 500


class DuplicateSubmission(RobustOptError):
    """The same adversarial examples were already submitted against the same model."""


def _clean_text(text: str, limit: int, what: str) -> str:
    """One line of printable text (control characters dropped), at most ``limit`` chars."""
    if not isinstance(text, str):
        raise RobustOptError(f"{what} must be text")
    out = " ".join("".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
                   .split())
    if not out:
        raise RobustOptError(f"{what} must not be empty: say who you are / what you ran")
    if len(out) > limit:
        raise RobustOptError(f"{what} is {len(out)} characters; keep it under {limit}")
    return out


def check_names(name: str, attack: str) -> tuple[str, str]:
    """The attacker's name and attack description as stored (one printable line each)."""
    return _clean_text(name, _MAX_NAME, "--name"), _clean_text(attack, _MAX_ATTACK, "--attack")


def make_entry(result: Any, name: str, attack: str, bundle: str | os.PathLike[str],
               file: str | os.PathLike[str]) -> dict[str, Any]:
    """The ledger entry for an accepted ``VerifyResult`` of the bundle at ``bundle``."""
    name, attack = check_names(name, attack)
    return {
        "sha256": result.sha256,
        "file_sha256": result.file_sha256,
        "name": name,
        "attack": attack,
        "accuracy": result.accuracy,
        "correct": result.correct,
        "n": result.n,
        "clean_accuracy": result.clean_accuracy,
        "max_distance": result.max_distance,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "file": Path(file).name,
        "model": {
            "bundle": Path(bundle).name,
            "manifest_sha256": result.bundle_sha256,
            "arch": result.arch,
            "dataset": result.dataset,
            "split": result.split,
            "threat": result.threat,
        },
    }


def _empty() -> dict[str, Any]:
    return {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "entries": []}


def read_ledger(path: Path | str) -> dict[str, Any]:
    """The ledger at ``path`` (an empty one if the file does not exist)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _empty()
    except (OSError, UnicodeDecodeError) as err:
        raise RobustOptError(f"cannot read the ledger {path} ({type(err).__name__}); check "
                             "the path and permissions") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise RobustOptError(f"the ledger {path} is not valid JSON (line {err.lineno}); "
                             "restore it from a backup or choose another --ledger") from None
    if (not isinstance(doc, dict) or doc.get("format") != LEDGER_FORMAT
            or not isinstance(doc.get("entries"), list)
            or not all(isinstance(e, dict) for e in doc["entries"])):
        raise RobustOptError(f"{path} is not a robustopt challenge ledger; choose another "
                             "--ledger")
    if not isinstance(doc.get("version"), int) or doc["version"] > LEDGER_VERSION:
        raise RobustOptError(f"{path} has ledger version {doc.get('version')!r}, newer than "
                             "this robustopt understands; upgrade robustopt")
    return doc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RobustOptError(f"cannot open the lock file {lock} ({err.strerror}); choose a "
                             "writable --ledger location") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _dict(a.get("model")).get("manifest_sha256") == _dict(b.get("model")).get(
        "manifest_sha256")


def append_entry(path: Path | str, entry: dict[str, Any]) -> int:
    """Append ``entry`` to the ledger under the lock; return the new number of entries.

    Raises ``DuplicateSubmission`` if its ``sha256`` is already listed for the same model.
    """
    path = Path(path)
    with _locked(path):
        doc = read_ledger(path)
        for old in doc["entries"]:
            if old.get("sha256") == entry["sha256"] and _same_model(old, entry):
                raise DuplicateSubmission(
                    f"these adversarial examples (sha256 {entry['sha256'][:16]}...) were "
                    f"already submitted by {old.get('name')!r} on {old.get('date')}; "
                    "the ledger is unchanged")
        doc["entries"].append(entry)
        write_json_atomic(path, doc)
        return len(doc["entries"])


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _rank_key(entry: dict[str, Any]) -> tuple[bool, float, str]:
    """Lowest accuracy first, then earliest; malformed accuracies last."""
    acc = _num(entry.get("accuracy"))
    return (math.isnan(acc), 0.0 if math.isnan(acc) else acc, str(entry.get("date")))


def _cell(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    for ch in "*_`<>[]":
        text = text.replace(ch, "\\" + ch)
    return text


def render_board(doc: dict[str, Any]) -> str:
    """A Markdown leaderboard, one table per model, lowest accuracy (strongest attack) first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in doc.get("entries", []):
        key = str(_dict(entry.get("model")).get("manifest_sha256"))
        groups.setdefault(key, []).append(entry)
    if not groups:
        return "No submissions yet.\n"
    parts = []
    for entries in groups.values():
        model = _dict(entries[0].get("model"))
        threat = _dict(model.get("threat"))
        parts.append(
            f"## {_cell(model.get('bundle'))}: {_cell(model.get('arch'))} on "
            f"{_cell(model.get('dataset'))}/{_cell(model.get('split'))}, "
            f"{_cell(threat.get('norm'))} eps {_num(threat.get('eps')):.4g}\n")
        parts.append("| Rank | Attack | Submitted by | Accuracy | n | Submission date | "
                     "sha256 |")
        parts.append("|---:|---|---|---:|---:|---|---|")
        ordered = sorted(entries, key=_rank_key)
        for rank, e in enumerate(ordered, 1):
            parts.append(
                f"| {rank} | {_cell(e.get('attack', ''))} | {_cell(e.get('name', ''))} | "
                f"{100 * _num(e.get('accuracy')):.2f}% | {_cell(e.get('n'))} | "
                f"{_cell(str(e.get('date', ''))[:10])} | {_cell(str(e.get('sha256', ''))[:12])} |")
        parts.append("")
    return "\n".join(parts)
