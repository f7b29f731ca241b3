"""Self-describing model files: safetensors weights plus the JSON spec in its metadata.

Nothing on the load path unpickles: pickle-based formats (``torch.save``, ``.pt``,
``.ckpt``, ...) can run arbitrary code when opened, so they are refused with a
one-line recipe to convert a file you trust. Every failure is a one-line
``ModelFileError``; no safetensors or torch traceback escapes.

File layout: ``{"robustopt": json}`` in the safetensors ``__metadata__``, where json is
``{"format": "robustopt-model", "version": 1, "arch", "kwargs", "mean", "std", **extra}``
and the tensors are the state dict of the model ``build_model`` returns.

Run directories (``runs/NAME/``): weights in ``model.safetensors`` ("last") and optionally
``best.safetensors`` ("best"). ``which=None`` picks ``model.json``'s ``"default_weights"``
("last" or "best") or else "last". Any of ``arch``, ``kwargs``, ``mean``, ``std`` present in
``model.json`` override the weights file's spec; other model.json fields (dataset, threat
model, ...) are returned alongside by ``read_model_file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from robustopt.atomic import fsync_dir
from robustopt.errors import ModelFileError, RobustOptError
from robustopt.models.registry import MODEL_NAMES, build_model, model_spec, unwrap_model
from robustopt.release import check_bundle, is_bundle

__all__ = [
    "FORMAT",
    "METADATA_KEY",
    "VERSION",
    "convert_state_dict",
    "load_model",
    "model_record",
    "read_model_file",
    "save_model",
    "weights_sha256",
]

FORMAT = "robustopt-model"
VERSION = 1
METADATA_KEY = "robustopt"
WEIGHT_FILES = {"last": "model.safetensors", "best": "best.safetensors"}
_RESERVED = ("format", "version", "arch", "kwargs", "mean", "std")
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


# ----------------------------------------------------------------------------- saving


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's own message, for embedding in ours."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def model_record(model: nn.Module, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object stored in a model file (and suitable as a run's ``model.json``)."""
    spec = model_spec(model)
    record: dict[str, Any] = {"format": FORMAT, "version": VERSION, **spec}
    if extra:
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            raise RobustOptError(
                "extra must be a dict with string keys; pass e.g. {'dataset': 'mnist'}"
            )
        clash = sorted(set(extra) & set(_RESERVED))
        if clash:
            raise RobustOptError(
                f"extra may not set reserved key(s) {', '.join(clash)}; rename them"
            )
        record.update(extra)
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RobustOptError(
            f"extra must be JSON-serialisable (str/int/float/bool/None/list/dict): {exc}"
        ) from None
    return record


def save_model(model: nn.Module, path: Path | str, extra: Mapping[str, Any] | None = None
               ) -> str:
    """Write ``model`` as one self-describing ``.safetensors`` file, atomically.

    The file is written next to ``path``, fsynced and renamed over it, so a crash never
    leaves a half-written model where a good one was. Returns the weights'
    :func:`weights_sha256`, so a caller can record which weights it wrote.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise RobustOptError(
            f"model files must end in .safetensors, got {path.name!r}; "
            f"save to {path.with_suffix('.safetensors').name!r}"
        )
    record = model_record(model, extra)
    # One fresh contiguous CPU copy per tensor: handles CUDA, channels_last and tied storage.
    tensors = {
        k: v.detach().to(device="cpu", memory_format=torch.contiguous_format, copy=True)
        for k, v in unwrap_model(model).state_dict().items()
    }
    digest = weights_sha256(tensors)
    metadata = {METADATA_KEY: json.dumps(record, sort_keys=True, allow_nan=False)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = save(tensors, metadata=metadata)  # bytes: save_file would create a 0600 file
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        del data
        os.replace(tmp, path)
    except Exception as exc:  # OSError or the safetensors writer's own error type
        tmp.unlink(missing_ok=True)
        raise RobustOptError(
            f"could not write {path} ({_one_line(exc)}); "
            "check that its directory is writable and has free space"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # make the rename itself durable
    return digest


def convert_state_dict(
    state_dict: Mapping[str, Any],
    arch: str,
    *,
    mean: Any,
    std: Any,
    path: Path | str,
    extra: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Save a trusted, already-loaded state dict (e.g. ``torch.load(f, weights_only=True)``)
    as a robustopt model file. Accepts the bare network's keys or the full model's, a
    ``{"state_dict": ...}``/``{"model": ...}`` wrapper, and DataParallel ``module.`` prefixes."""
    for key in ("state_dict", "model", "net"):
        inner = state_dict.get(key) if isinstance(state_dict, Mapping) else None
        if isinstance(inner, Mapping):
            state_dict = inner
            break
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, Tensor) for v in state_dict.values()
    ):
        raise RobustOptError(
            "state_dict must map parameter names to tensors; pass model.state_dict() "
            "or torch.load(path, weights_only=True)"
        )
    tensors = {k.removeprefix("module."): v for k, v in state_dict.items()}
    model = build_model(arch, mean=mean, std=std, **kwargs)
    if not any(k.startswith("net.") for k in tensors):
        tensors = {f"net.{k}": v for k, v in tensors.items()}
    _load_weights(model, tensors, "the given state dict")
    save_model(model, path, extra)


# ----------------------------------------------------------------------------- loading


def _pickle_error(path: Path, kind: str) -> ModelFileError:
    suffix = ".converted.safetensors" if path.suffix == ".safetensors" else ".safetensors"
    out = path.with_suffix(suffix)
    return ModelFileError(
        f"{path} is {kind}; robustopt never loads pickles from model files because unpickling "
        'can run arbitrary code. If you trust it, convert it once: python -c "import torch; '
        "from robustopt.modelfile import convert_state_dict; convert_state_dict(torch.load("
        f"{str(path)!r}, weights_only=True), 'ARCH', mean=MEAN, std=STD, path={str(out)!r})\" "
        f"with ARCH one of {', '.join(MODEL_NAMES)}"
    )


def _sniff(path: Path) -> dict[str, Any]:
    """Check the file really is safetensors (refusing pickles before anything parses them)
    and return its ``__metadata__`` (possibly empty)."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise _pickle_error(path, f"a {path.suffix} file (a pickle-based format)")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if head[:4] == b"PK\x03\x04":
                raise _pickle_error(path, "a zip archive (the torch.save pickle format)")
            if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
                raise _pickle_error(path, "a pickle")
            if len(head) < 8:
                raise ModelFileError(
                    f"{path} is truncated ({size} bytes) and not a safetensors model file; "
                    "re-save or re-download it"
                )
            n = int.from_bytes(head, "little")
            if n < 2 or n > _MAX_HEADER or n > size - 8:
                raise ModelFileError(
                    f"{path} is not a valid safetensors file (corrupt or truncated header); "
                    "re-save or re-download it"
                )
            raw = f.read(n)
    except OSError as exc:
        raise ModelFileError(
            f"cannot read {path} ({_one_line(exc)}); check the path and its permissions"
        ) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(
            f"{path} is not a valid safetensors file (unreadable header); re-save or re-download it"
        ) from None
    if not isinstance(header, dict):
        raise ModelFileError(
            f"{path} is not a valid safetensors file (header is not an object); "
            "re-save or re-download it"
        )
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _file_record(path: Path, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The robustopt record in a safetensors metadata map, or None if there is none."""
    raw = meta.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelFileError(
            f"not a robustopt model file: {path} has malformed {METADATA_KEY!r} metadata; "
            "re-save it with robustopt.modelfile.save_model"
        )
    version = record.get("version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(
            f"{path} has an invalid format version {version!r}; re-save it with save_model"
        )
    if version > VERSION:
        raise ModelFileError(
            f"{path} uses model-file format version {version}, newer than this robustopt "
            f"understands ({VERSION}); upgrade robustopt"
        )
    return record


def _run_dir_files(directory: Path, which: str | None) -> tuple[Path, dict[str, Any]]:
    """Pick the weights file of a run directory and read its ``model.json`` (if any)."""
    info: dict[str, Any] = {}
    json_path = directory / "model.json"
    if json_path.is_file():
        try:
            info = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(
                f"cannot read {json_path} ({_one_line(exc)}); fix or delete model.json"
            ) from None
        if not isinstance(info, dict):
            raise ModelFileError(f"{json_path} must hold a JSON object; fix or delete it")
    if which is None:
        which = info.get("default_weights", "last")
        if which not in WEIGHT_FILES:
            raise ModelFileError(
                f"{json_path} has default_weights={which!r}; set it to 'last' or 'best'"
            )
    weights = directory / WEIGHT_FILES[which]
    if not weights.is_file():
        raise ModelFileError(
            f"run directory {directory} has no {weights.name} (which={which!r}); "
            "train into it first or pass a .safetensors file"
        )
    return weights, info


def _check_spec(record: Mapping[str, Any], source: str) -> None:
    if not isinstance(record.get("arch"), str):
        raise ModelFileError(
            f"{source} does not say which architecture it holds ('arch'); re-save it with "
            "robustopt.modelfile.save_model or add 'arch' to the run's model.json"
        )
    if not isinstance(record.get("kwargs", {}), dict):
        raise ModelFileError(
            f"{source} has 'kwargs' that is not a JSON object; make it e.g. {{\"depth\": 28}}"
        )
    for key in ("mean", "std"):
        value = record.get(key)
        if not isinstance(value, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise ModelFileError(
                f"{source} has no valid {key!r}; it must be a list of per-channel floats, "
                "e.g. [0.1307] for MNIST"
            )


def read_model_file(
    path: Path | str, which: str | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Return ``(record, tensors)`` from a ``.safetensors`` model file or a run directory
    (or a release bundle directory, whose ``MANIFEST.sha256`` is checked first).

    ``record`` has at least ``arch``, ``kwargs``, ``mean``, ``std``; ``which`` ("last",
    "best" or None for model.json's ``default_weights``) applies to run directories only.
    """
    path = Path(path)
    if which is not None and which not in ("last", "best"):
        raise RobustOptError(f"which must be 'last', 'best' or None, got {which!r}")
    if not path.exists():
        raise ModelFileError(
            f"no such file or directory: {path}; pass a .safetensors model file or a run "
            "directory containing model.safetensors"
        )
    info: dict[str, Any] = {}
    if path.is_dir():
        if is_bundle(path):  # a release bundle: every file must match its MANIFEST.sha256
            check_bundle(path)
        weights, info = _run_dir_files(path, which)
    elif which is not None:
        raise RobustOptError(
            f"which={which!r} only applies to run directories, but {path} is a file; drop it"
        )
    else:
        weights = path
    record = _file_record(weights, _sniff(weights))
    if record is None:
        if "arch" not in info:
            raise ModelFileError(
                f"not a robustopt model file: {weights} has no {METADATA_KEY!r} metadata; "
                "convert trusted weights with robustopt.modelfile.convert_state_dict"
            )
        record = {}
    overrides = {k: info[k] for k in ("arch", "kwargs", "mean", "std") if k in info}
    record = {**record, **{k: v for k, v in info.items() if k not in record}, **overrides}
    _check_spec(record, str(weights) if not overrides else f"{weights} with model.json")
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types; never leak them
        raise ModelFileError(
            f"{weights} is corrupt or truncated ({_one_line(exc)}); re-save or re-download it"
        ) from None
    return record, tensors


def _load_weights(model: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
    """Strict, typed state-dict loading: one line naming what does not match."""
    _check_weights(model, tensors, source)
    model.load_state_dict(tensors, strict=True)


def _check_weights(model: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
    """Names, shapes and kinds of ``tensors`` against ``model``'s (a meta model works)."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors
        and (tensors[k].shape != v.shape or tensors[k].is_floating_point() != v.is_floating_point())
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shape/type (e.g. {'; '.join(wrong[:2])})")
        spec = vars(model).get("robustopt_spec", {})
        raise ModelFileError(
            f"weights in {source} do not match architecture {spec.get('arch')!r} "
            f"{spec.get('kwargs', {})}: {', '.join(parts)}; use the arch and arguments "
            "the weights were trained with"
        )


def weights_sha256(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of the weights themselves (names, dtypes, shapes, bytes), not of a file: the
    same model copied to another path or re-saved with other metadata keeps its digest, so
    evaluations of one model made apart (shards, other machines) can be matched."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_model(
    path: Path | str,
    device: torch.device | str | None = None,
    which: str | None = None,
) -> nn.Module:
    """Build the model a model file or run directory describes, with its weights, in eval
    mode on ``device`` (CPU if None); parameters keep ``requires_grad=True``."""
    record, tensors = read_model_file(path, which)
    return build_from_record(record, tensors, path, device)


def build_from_record(
    record: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    path: Path | str,
    device: torch.device | str | None = None,
) -> nn.Module:
    """:func:`load_model` from what :func:`read_model_file` returned, for callers that need
    the record or the tensors too (the file, a bundle's checksums included, is read once)."""
    def build() -> nn.Module:
        try:
            return build_model(record["arch"], mean=record["mean"], std=record["std"],
                               **record.get("kwargs", {}))
        except ModelFileError:
            raise
        except RobustOptError as exc:
            raise ModelFileError(f"cannot build the model described by {path}: {exc}") from None

    # a file's arguments are untrusted (e.g. width 100000 beside small weights): compare
    # the shapes on a skeleton that allocates nothing before building the model for real
    with torch.device("meta"):
        _check_weights(build(), tensors, str(path))
    model = build()
    _load_weights(model, tensors, str(path))
    if device is not None:
        model.to(device)
    return model.eval()
