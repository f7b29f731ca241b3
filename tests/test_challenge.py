"""Release bundles and the open attack challenge.

* The submission verifier is fuzzed with malformed and hostile files (garbage, truncations,
  pickles that would plant a marker file, wrong dtype/shape/order/endianness, NaN/inf,
  out-of-box and out-of-ball values, huge declared sizes, zip bombs): each is rejected with
  a one-line ``SubmissionError``, nothing is unpickled, memory stays bounded. Every
  distinct rejected input is counted in ``REJECTED`` and the total is printed at the end.
* A bundle exported from a tiny trained run loads with robustopt (manifest checked) and
  with plain ``torch.export.load`` in a process where robustopt is not importable.
* ``robustopt attack --save-adv`` output is accepted and scores what the attack reported.
* Concurrent ``challenge submit`` processes lose no ledger entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustopt.cli as cli
from robustopt.challenge import (
    DuplicateSubmission,
    SubmissionError,
    append_entry,
    check_values,
    read_ledger,
    read_submission,
    render_board,
)
from robustopt.cli import challenge_cmd, export_cmd
from robustopt.errors import ModelFileError, RobustOptError
from robustopt.modelfile import load_model, read_model_file
from robustopt.release import MANIFEST, check_bundle
from robustopt.rundir import RunDir
from robustopt.threat import L2Ball, LinfBall
from robustopt.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# ----------------------------------------------------------------------------- fuzz harness

SHAPE = (1, 4, 4)  # the per-image shape of the synthetic split the fuzz tests use
MAX_N = 8          # its number of points
# Clean points on the 1/255 grid, kept in [0.25, 0.75] so eps-moves stay inside the box.
CLEAN = (np.random.default_rng(0).integers(64, 192, size=(MAX_N, *SHAPE)) / 255).astype(
    np.float32)
LINF, L2 = LinfBall(0.1), L2Ball(0.5)
REJECTED: set[str] = set()  # sha256 of every distinct bad input the suite tried
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _raw_npy(header: bytes | str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    header = header.encode("latin1") if isinstance(header, str) else header
    size = struct.pack("<H", len(header)) if version == (1, 0) else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes(version) + size + header + data


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _submit(directory: Path, data: bytes, threat=LINF, suffix: str = ".npy",
            max_n: int = MAX_N):
    path = directory / f"sub-{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
    path.write_bytes(data)
    sub = read_submission(path, SHAPE, max_n)
    check_values(sub.x_adv, CLEAN, threat, where=str(path))
    return sub


def _reject(directory: Path, data: bytes, *fragments: str, threat=LINF, suffix: str = ".npy",
            max_n: int = MAX_N) -> str:
    """Assert ``data`` is rejected with a one-line SubmissionError containing ``fragments``."""
    with pytest.raises(SubmissionError) as info:
        _submit(directory, data, threat, suffix, max_n)
    message = str(info.value)
    assert message.startswith("rejected ") and "\n" not in message, message
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    REJECTED.add(hashlib.sha256(data + f"|{threat.norm}|{max_n}".encode()).hexdigest())
    return message


def _good(n: int = 3) -> np.ndarray:
    return CLEAN[:n].copy()


# ----------------------------------------------------------------------------- accepted


def test_valid_npy_and_npz_are_accepted_with_one_content_hash(fuzz_dir):
    x = np.clip(_good(5) + np.float32(0.1), 0, 1).astype(np.float32)  # exactly at eps
    a = _submit(fuzz_dir, _npy(x))
    assert a.kind == "npy" and np.array_equal(a.x_adv, x)
    buf = io.BytesIO()
    np.savez_compressed(buf, x_adv=x, robust=np.ones(5, bool), note=np.array(["a"]))
    b = _submit(fuzz_dir, buf.getvalue(), suffix=".npz")
    assert b.kind == "npz" and np.array_equal(b.x_adv, x)
    assert a.sha256 == b.sha256 and a.file_sha256 != b.file_sha256


# ----------------------------------------------------------------------------- garbage


@FUZZ
@given(data=st.binary(max_size=400))
def test_garbage_bytes_are_rejected(fuzz_dir, data):
    _reject(fuzz_dir, data)


@FUZZ
@given(version=st.sampled_from([(1, 0), (2, 0)]), tail=st.binary(max_size=300))
def test_npy_magic_followed_by_garbage_is_rejected(fuzz_dir, version, tail):
    _reject(fuzz_dir, b"\x93NUMPY" + bytes(version) + tail, ".npy")


@FUZZ
@given(header=st.text(max_size=200))
def test_garbage_headers_are_rejected(fuzz_dir, header):
    _reject(fuzz_dir, _raw_npy(header.encode("utf-8", "replace")[:60000], b"\0" * 64))


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 4, 4), 'x': 1}",
    "{'descr': '<f4', 'fortran_order': False}",
    "[1, 2, 3]",
    "{'descr': '<f4', 'fortran_order': False, 'shape': [1, 1, 4, 4]}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1.0, 1, 4, 4)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 1, 4, 4)}",
    "{'descr': '<f4', 'fortran_order': 'no', 'shape': (1, 1, 4, 4)}",
    "{'descr': 'nonsense', 'fortran_order': False, 'shape': (1, 1, 4, 4)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 300 + ")" * 300 + ")}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "9" * 5000 + ", 1, 4, 4)}",
    "__import__('os').system('touch /tmp/robustopt-pwned')",
], ids=lambda h: h[:40])
def test_hostile_headers_are_rejected(fuzz_dir, header):
    _reject(fuzz_dir, _raw_npy(header, b"\0" * 64))
    assert not Path("/tmp/robustopt-pwned").exists()


@pytest.mark.parametrize("version", [(0, 0), (3, 0), (9, 9), (255, 255)])
def test_unsupported_npy_versions_are_rejected(fuzz_dir, version):
    good = _npy(_good(1))
    _reject(fuzz_dir, good[:6] + bytes(version) + good[8:], "version")


def test_every_truncation_of_valid_files_is_rejected(fuzz_dir):
    npy = _npy(_good(2))
    buf = io.BytesIO()
    np.savez(buf, x_adv=_good(2))
    npz = buf.getvalue()
    for cut in range(len(npy)):
        _reject(fuzz_dir, npy[:cut])
    for cut in range(0, len(npz), 3):
        _reject(fuzz_dir, npz[:cut], suffix=".npz")
    _reject(fuzz_dir, npy + b"\0\0\0\0", "padded")  # trailing bytes


@FUZZ
@given(pos=st.integers(0, 10_000), value=st.integers(0, 255))
def test_single_byte_mutations_never_get_past_numpy(fuzz_dir, pos, value):
    """Differential: a mutated valid file is either rejected, or accepted with exactly the
    array numpy's own reader (pickle disabled) sees, inside the rules."""
    data = bytearray(_npy(_good(2)))
    pos %= len(data)
    if data[pos] == value:
        return
    data[pos] = value
    data = bytes(data)
    try:
        sub = _submit(fuzz_dir, data)
    except SubmissionError:
        REJECTED.add(hashlib.sha256(data + b"|linf|8").hexdigest())
        return
    reference = np.load(io.BytesIO(data), allow_pickle=False)
    assert np.array_equal(sub.x_adv, reference)


# ----------------------------------------------------------------------------- pickles


class _Plant:
    """Unpickling this creates the file at ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_payloads(marker: Path) -> list[tuple[str, bytes, str]]:
    import pickle

    plant = _Plant(marker)
    obj4d = np.empty((1, *SHAPE), dtype=object)
    obj4d.fill(plant)
    payloads = [(f"pickle-p{p}", pickle.dumps(plant, protocol=p), "") for p in range(6)]
    payloads += [
        ("object-1d", _npy(np.array([plant], dtype=object)), "objects"),
        ("object-4d", _npy(obj4d), "objects"),
        ("pickled-list-as-npy", _npy(np.array([plant, 1], dtype=object)), "objects"),
    ]
    payloads += [
        ("npz-object-member", _zip([("x_adv.npy", _npy(obj4d))]), "objects"),
        ("npz-raw-pickle-member", _zip([("x_adv.npy", pickle.dumps(plant))]), "magic"),
        ("npz-pickle-extra-member", _zip([("x_adv.npy", _npy(_good(1))),
                                          ("evil.npy", _npy(obj4d))]), ""),
    ]
    return payloads


def test_pickled_payloads_are_rejected_and_never_run(fuzz_dir, tmp_path):
    marker = tmp_path / "PLANTED"
    accepted = 0
    for name, data, fragment in _pickle_payloads(marker):
        suffix = ".npz" if name.startswith("npz") else ".npy"
        if name == "npz-pickle-extra-member":  # other members are never read at all
            sub = _submit(fuzz_dir, data, suffix=suffix)
            accepted += sub.n
        else:
            _reject(fuzz_dir, data, fragment, suffix=suffix)
        assert not marker.exists(), f"{name} executed code"
    assert accepted == 1
    # The payloads are live: numpy with pickles allowed would have run them.
    live = tmp_path / "live.npy"
    live.write_bytes(_pickle_payloads(tmp_path / "LIVE")[6][1])
    np.load(live, allow_pickle=True)
    assert (tmp_path / "LIVE").exists()


# ----------------------------------------------------------------------------- header rules


@pytest.mark.parametrize("dtype", ["<f8", "<f2", "|i1", "|u1", "<i4", "<i8", "<c8", "|b1",
                                   ">f4", ">f8", "<U1", "|S4", "<M8[s]", "<m8[s]", "|V4",
                                   [("a", "<f4")], [("a", "<f4"), ("b", "<f4")]], ids=str)
def test_wrong_dtypes_are_rejected(fuzz_dir, dtype):
    _reject(fuzz_dir, _npy(np.zeros((2, *SHAPE), dtype=dtype)), "dtype")


def test_big_endian_and_fortran_order_are_rejected(fuzz_dir):
    msg = _reject(fuzz_dir, _npy(_good(3).astype(">f4")), "big-endian")
    assert "'<f4'" in msg
    fortran = np.asfortranarray(_good(3))
    assert not fortran.flags.c_contiguous
    _reject(fuzz_dir, _npy(fortran), "Fortran")


@pytest.mark.parametrize("shape", [(), (16,), (1, 16), (1, 4, 4), (1, 1, 1, 4, 4),
                                   (1, 3, 4, 4), (1, 1, 4, 5), (1, 1, 5, 4), (1, 4, 4, 1),
                                   (1, 1, 16, 1), (0, 1, 4, 4), (MAX_N + 1, 1, 4, 4)])
def test_wrong_shapes_and_ranks_are_rejected(fuzz_dir, shape):
    x = np.full(shape, 0.5, dtype=np.float32)
    _reject(fuzz_dir, _npy(x))


# ----------------------------------------------------------------------------- values


@FUZZ
@given(i=st.integers(0, MAX_N - 1), j=st.integers(0, 15),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]), later=st.booleans())
def test_non_finite_values_name_the_first_example(fuzz_dir, i, j, bad, later):
    x = _good(MAX_N)
    x[i].flat[j] = bad
    if later and i < MAX_N - 1:
        x[MAX_N - 1].flat[0] = math.nan  # a second offender after the first
    _reject(fuzz_dir, _npy(x), f"example {i} has the non-finite value")


@FUZZ
@given(i=st.integers(0, MAX_N - 1), j=st.integers(0, 15),
       by=st.floats(1e-6, 1e6), above=st.booleans())
def test_values_outside_the_box_are_rejected_with_the_excess(fuzz_dir, i, j, by, above):
    x = _good(MAX_N)
    x[i].flat[j] = np.float32(1 + by if above else -by)
    value = float(x[i].flat[j])
    msg = _reject(fuzz_dir, _npy(x), f"example {i} has value", "outside [0, 1] by")
    excess = float(msg.rsplit("by ", 1)[1])
    assert excess == pytest.approx(value - 1 if above else -value, rel=1e-2)


def _by(message: str) -> float:
    return float(re.search(r"more than eps \S+ by (\S+)", message).group(1))


@FUZZ
@given(i=st.integers(0, MAX_N - 1), j=st.integers(0, 15), up=st.booleans())
def test_linf_just_outside_eps_is_rejected(fuzz_dir, i, j, up):
    x = _good(MAX_N)
    x[i] = np.clip(CLEAN[i] + 0.1 * np.sign(np.sin(np.arange(16) + i)).reshape(SHAPE), 0, 1)
    _submit(fuzz_dir, _npy(x))  # every pixel at exactly eps: accepted
    x[i].flat[j] = CLEAN[i].flat[j] + (0.1 + 1e-4 if up else -(0.1 + 1e-4))
    msg = _reject(fuzz_dir, _npy(x), f"example {i} is at linf distance")
    assert _by(msg) == pytest.approx(1e-4, abs=1e-6)


@FUZZ
@given(i=st.integers(0, MAX_N - 1), signs=st.lists(st.booleans(), min_size=16, max_size=16))
def test_l2_just_outside_eps_is_rejected(fuzz_dir, i, signs):
    direction = np.where(signs, 1.0, -1.0).reshape(SHAPE) / 4.0  # unit L2 norm
    x = _good(MAX_N)
    x[i] = CLEAN[i] + (0.5 - 1e-5) * direction
    _submit(fuzz_dir, _npy(x), threat=L2)
    x[i] = CLEAN[i] + (0.5 + 1e-4) * direction
    msg = _reject(fuzz_dir, _npy(x), f"example {i} is at l2 distance", threat=L2)
    assert _by(msg) == pytest.approx(1e-4, abs=1e-6)


def test_the_first_of_several_offenders_is_named(fuzz_dir):
    x = _good(MAX_N)
    x[5].flat[3] = CLEAN[5].flat[3] + 0.2
    x[6].flat[0] = math.nan  # a later example breaking an earlier-checked rule
    x[2].flat[7] = CLEAN[2].flat[7] - 0.2
    _reject(fuzz_dir, _npy(x), "example 2 is at linf distance", "by 0.1")


# ----------------------------------------------------------------------------- huge sizes


def _bounded(fn) -> int:
    """Run ``fn`` and return the peak traced memory in bytes."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_huge_declared_sizes_allocate_nothing(fuzz_dir):
    tiny = b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"\0" * 8
    assert len(tiny) == 20
    elements = 10**12
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': "
              f"({elements // 16}, 1, 4, 4), }}")
    claims = _raw_npy(header, b"\0" * 20)
    v1 = b"\x93NUMPY\x01\x00" + struct.pack("<H", 65535) + b"{'descr'"  # 65535 claimed
    cases = [(tiny, "header claims", MAX_N), (claims, "data bytes but its header", elements),
             (claims, "test split has only", MAX_N), (v1, "header claims", MAX_N)]
    for data, fragment, max_n in cases:
        peak = _bounded(lambda d=data, f=fragment, m=max_n: _reject(fuzz_dir, d, f, max_n=m))
        assert peak < 2 * 2**20, (fragment, peak)


def _patch_sizes(zip_bytes: bytes, size: int) -> bytes:
    """Rewrite the uncompressed size in every local and central header of a one-member zip."""
    data = bytearray(zip_bytes)
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, size)
    struct.pack_into("<I", data, central + 24, size)
    return bytes(data)


def test_zip_bombs_and_lying_members_are_refused_before_decompressing(fuzz_dir, tmp_path):
    good = _zip([("x_adv.npy", _npy(_good(2)))])
    lying_big = _patch_sizes(good, 0xFFFFFFF0)
    lying_small = _patch_sizes(good, len(_npy(_good(2))) - 8)  # caught by the CRC
    short = _zip([("x_adv.npy", _npy(_good(2))[:-8])])  # honest sizes, short payload
    # A real bomb: 64 MiB of zeros deflated to ~64 KiB, behind a header claiming 4M images.
    bomb_path = tmp_path / "bomb.npz"
    header = _raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1, 4, 4), }")
    with zipfile.ZipFile(bomb_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x_adv.npy", "w", force_zip64=True) as fh:
            fh.write(header)
            zeros = bytes(1 << 20)
            for _ in range(64):
                fh.write(zeros)
    bomb = bomb_path.read_bytes()
    assert len(bomb) < 200_000
    cases = [(lying_big, "refused before decompressing"), (bomb, "refused before decompressing"),
             (lying_small, "Bad CRC"), (short, "truncated or padded")]
    for data, fragment in cases:
        peak = _bounded(lambda d=data, f=fragment: _reject(fuzz_dir, d, f, suffix=".npz"))
        assert peak < 4 * 2**20, (fragment, peak)


def test_malformed_npz_archives_are_rejected(fuzz_dir):
    member = _npy(_good(2))
    good = _zip([("x_adv.npy", member)])
    encrypted = bytearray(good)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = encrypted.index(sig) + off
        encrypted[pos] |= 1
    corrupt_crc = bytearray(good)
    pos = corrupt_crc.index(member[-8:])
    corrupt_crc[pos] ^= 0x01  # a data byte changes, the CRC no longer matches
    with pytest.warns(UserWarning):
        duplicate = _zip([("x_adv.npy", member), ("x_adv.npy", member)])
    cases = [
        (_zip([("arr_0.npy", member)]), "exactly one x_adv.npy"),
        (_zip([]), "exactly one x_adv.npy"),
        (duplicate, "exactly one x_adv.npy"),
        (_zip([(f"m{i}.npy", b"") for i in range(70)] + [("x_adv.npy", member)]), "members"),
        (_zip([("x_adv.npy", member)], zipfile.ZIP_BZIP2), "compression"),
        (_zip([("x_adv.npy", member)], zipfile.ZIP_LZMA), "compression"),
        (bytes(encrypted), "encrypted"),
        (bytes(corrupt_crc), "not a valid .npz"),
        (_zip([("x_adv.npy", _npy(_good(2).astype("<f8")))]), "dtype"),
        (_zip([("x_adv.npy", _npy(np.zeros((2, 1, 4, 5), np.float32)))]), "shape"),
        (_zip([("x_adv.npy", b"not an array at all")]), "magic"),
        (_zip([("x_adv.npy", b"")]), "truncated"),
        (b"PK\x03\x04" + b"\0" * 100, "not a valid .npz"),
        (good[: len(good) // 2], "not a valid .npz"),
    ]
    for data, fragment in cases:
        _reject(fuzz_dir, data, fragment, suffix=".npz")


# ----------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module", autouse=True)
def _commands():
    """Register export/challenge on the CLI if the package has not done so yet."""
    extra = tuple(m for m in (export_cmd, challenge_cmd) if m not in cli.COMMANDS)
    if not extra:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMANDS", cli.COMMANDS + extra)
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("challenge") / "run"
    train(TrainConfig(dataset="mnist", data_dir=str(shared_data), train_n=1000, heldout_n=100,
                      epochs=1, adversary="none", device="cpu"), out)
    RunDir(out).write_eval({"robustopt_version": "test", "clean_accuracy": 0.9,
                            "robust_accuracy": 0.01, "n": 100, "suite": "quick",
                            "threat": {"norm": "linf", "eps": 0.3},
                            "settings": {"split": "test"}})
    return out


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "mnist-small"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    return out


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bundle_contents_and_manifest(bundle, run_dir):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(["model.safetensors", "model.json", "model.pt2", "README.md",
                            MANIFEST])
    info = json.loads((bundle / "model.json").read_text())
    assert info["release"]["format"] == "robustopt-release"
    assert info["dataset"] == "mnist" and info["arch"] == "small-mnist"
    assert info["threat"] == {"norm": "linf", "eps": 0.3}
    assert info["normalisation"]["mean"] == info["mean"] and info["input_shape"] == [1, 28, 28]
    assert info["accuracy"]["clean_accuracy"] == 0.9
    assert info["accuracy"]["robust_accuracy"] == 0.01
    assert "never reads" in info["torch_export"]["warning"]
    assert "trust" in (bundle / "README.md").read_text()
    lines = (bundle / MANIFEST).read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST], cwd=bundle, check=True)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_model(bundle)(x), load_model(run_dir)(x))
    record, _ = read_model_file(bundle)
    assert record["dataset"] == "mnist"


def test_tampered_bundles_are_refused(bundle, tmp_path, capsys):
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(bundle, target)
        return target

    flipped = copy("flipped")
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(data))
    edited = copy("edited")
    info = json.loads((edited / "model.json").read_text())
    info["threat"]["eps"] = 0.0
    (edited / "model.json").write_text(json.dumps(info))
    no_manifest = copy("no-manifest")
    (no_manifest / MANIFEST).unlink()
    unlisted = copy("unlisted")
    shutil.copy(unlisted / "model.safetensors", unlisted / "best.safetensors")
    dropped = copy("dropped")
    kept = [ln for ln in (dropped / MANIFEST).read_text().splitlines() if "model.json" not in ln]
    (dropped / MANIFEST).write_text("\n".join(kept) + "\n")
    garbled = copy("garbled")
    (garbled / MANIFEST).write_text("not a manifest\n")
    pt2 = copy("pt2")
    (pt2 / "model.pt2").write_bytes(b"PK\x03\x04 swapped")
    truncated = copy("truncated")  # truncated weights with a manifest that agrees
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    manifest = (truncated / MANIFEST).read_text().replace(
        hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest(),
        hashlib.sha256(weights.read_bytes()).hexdigest())
    (truncated / MANIFEST).write_text(manifest)
    cases = [(flipped, "model.safetensors does not match"), (edited, "model.json does not match"),
             (no_manifest, "needs its manifest"), (unlisted, "best.safetensors is not listed"),
             (dropped, "model.json is not listed"), (garbled, "line 1"),
             (pt2, "model.pt2 does not match"), (truncated, "corrupt or truncated")]
    for path, fragment in cases:
        with pytest.raises(ModelFileError, match=re.escape(fragment)):
            load_model(path)
        code, _, err = _main(capsys, "challenge", "verify", "--model", path, "--adv",
                             tmp_path / "none.npy", "--data-dir", DATA)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    check_bundle(bundle)  # the original is untouched
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickled)
    with pytest.raises(ModelFileError, match="convert"):
        load_model(pickled)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(bundle / "model.pt2")  # the program is a zip: never loaded by robustopt


def test_export_refuses_to_overwrite_without_force(run_dir, bundle, capsys):
    code, _, err = _main(capsys, "export", run_dir, "--out", bundle)
    assert code == 2 and "--force" in err
    check_bundle(bundle)


def test_evaluating_a_bundle_needs_out_and_leaves_it_as_published(bundle, capsys):
    before = sorted(p.name for p in bundle.iterdir())
    code, _, err = _main(capsys, "evaluate", bundle, "--n", "10", "--suite", "quick")
    assert code == 2 and "--out" in err and err.count("\n") == 1, err
    for write in (lambda r: r.write_report("<html>"), lambda r: r.plots_dir(),
                  lambda r: r.write_eval({})):  # report and landscape write through these
        with pytest.raises(RobustOptError, match="release bundle"):
            write(RunDir(bundle))
    assert sorted(p.name for p in bundle.iterdir()) == before
    check_bundle(bundle)


def test_export_never_replaces_the_run_it_exports(run_dir, capsys):
    before = sorted(p.name for p in run_dir.iterdir())
    for out in (run_dir, run_dir.parent):  # the run itself, or a folder holding it
        code, _, err = _main(capsys, "export", run_dir, "--out", out, "--force")
        assert code == 2 and "would delete the source" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in run_dir.iterdir()) == before


_PLAIN_TORCH = """
import importlib.util, sys
sys.path.append(sys.argv[1])
assert importlib.util.find_spec("robustopt") is None, "robustopt is importable"
try:
    import robustopt  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("robustopt imported")
import numpy as np
import torch
program = torch.export.load(sys.argv[2])
x = torch.from_numpy(np.load(sys.argv[3]))
with torch.no_grad():
    np.save(sys.argv[4], program.module()(x).numpy())
assert not [m for m in sys.modules if m.startswith("robustopt")]
print("ok")
"""


def test_program_loads_with_plain_torch_without_robustopt(bundle, tmp_path):
    site = Path(torch.__file__).resolve().parents[1]
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # not batch 2
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PLAIN_TORCH, str(site), str(bundle / "model.pt2"),
         str(tmp_path / "x.npy"), str(tmp_path / "logits.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
    with torch.no_grad():
        want = load_model(bundle)(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- challenge


@pytest.fixture(scope="module")
def attacked(bundle, tmp_path_factory) -> tuple[Path, str]:
    """``robustopt attack --save-adv`` on the bundle: the file and the printed output."""
    adv = tmp_path_factory.mktemp("adv") / "pgd.npy"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["attack", str(bundle), "--data-dir", str(DATA), "--n", "100",
                         "--steps", "5", "--eps", "0.1", "--save-adv", str(adv)])
    assert code == 0
    return adv, out.getvalue()


def _accuracy(out: str) -> str:
    return re.search(r"^accuracy ([\d.]+)%", out, re.M).group(1)


def test_saved_attack_is_accepted_and_scores_what_the_attack_reported(bundle, attacked,
                                                                       capsys, tmp_path):
    adv, report = attacked
    reported = re.search(r"adversarial accuracy\s+([\d.]+)%", report).group(1)
    code, out, err = _main(capsys, "challenge", "verify", "--model", bundle, "--adv", adv,
                           "--data-dir", DATA)
    assert code == 0, err
    assert _accuracy(out) == reported, (report, out)
    x = np.load(adv, allow_pickle=False)
    np.savez(tmp_path / "pgd.npz", x_adv=x)
    code, out_npz, err = _main(capsys, "challenge", "verify", "--model", bundle, "--adv",
                               tmp_path / "pgd.npz", "--data-dir", DATA)
    assert code == 0, err
    assert _accuracy(out_npz) == reported
    assert out.splitlines()[-1] == out_npz.splitlines()[-1]  # the same content hash
    # One example pushed 1e-4 past the bundle's eps (0.3): rejected on one line, exit 2.
    clean = np.load(adv, allow_pickle=False)  # start from the accepted file
    from robustopt.data import load_dataset

    ref, _ = load_dataset("mnist", "test", DATA).tensors(n=100)
    bad = clean.copy()
    bad[41, 0, 14, 14] = ref[41, 0, 14, 14].item() + 0.3001 if ref[41, 0, 14, 14] < 0.5 \
        else ref[41, 0, 14, 14].item() - 0.3001
    np.save(tmp_path / "bad.npy", bad)
    code, out, err = _main(capsys, "challenge", "verify", "--model", bundle, "--adv",
                           tmp_path / "bad.npy", "--data-dir", DATA)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "example 41 is at linf distance" in err and "by 0.0001" in err, err


def _child_submit(barrier, bundle: str, adv: str, name: str, ledger: str) -> None:
    torch.set_num_threads(1)
    barrier.wait(timeout=60)
    sys.exit(cli.main(["challenge", "submit", "--model", bundle, "--adv", adv, "--name", name,
                       "--attack", f"noise | seed {name}", "--ledger", ledger,
                       "--data-dir", str(DATA), "--batch-size", "50"]))


def test_concurrent_submits_lose_no_entry(bundle, tmp_path, capsys):
    from robustopt.data import load_dataset

    x, _ = load_dataset("mnist", "test", DATA).tensors(n=50)
    files = []
    for k in range(6):
        noise = torch.empty_like(x).uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(k))
        path = tmp_path / f"sub{k}.npy"
        np.save(path, (x + noise).clamp(0, 1).numpy())
        files.append(path)
    ledger = tmp_path / "ledger.json"
    ctx = multiprocessing.get_context("fork")
    jobs = [(str(f), f"attacker-{k}") for k, f in enumerate(files)]
    jobs.append((str(files[0]), "copycat"))  # a duplicate racing its original
    barrier = ctx.Barrier(len(jobs))
    procs = [ctx.Process(target=_child_submit, args=(barrier, str(bundle), f, n, str(ledger)))
             for f, n in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    codes = [p.exitcode for p in procs]
    assert codes.count(0) == 6 and codes.count(2) == 1, codes
    doc = read_ledger(ledger)
    entries = doc["entries"]
    assert len(entries) == 6
    assert len({e["sha256"] for e in entries}) == 6
    names = {e["name"] for e in entries}
    assert names in ({f"attacker-{k}" for k in range(6)},
                     {f"attacker-{k}" for k in range(1, 6)} | {"copycat"})
    for e in entries:
        assert e["n"] == 50 and 0 <= e["accuracy"] <= 1 and e["correct"] == round(
            e["accuracy"] * 50)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    capsys.readouterr()
    # A duplicate is refused afterwards too, and the board renders, lowest accuracy first.
    code, _, err = _main(capsys, "challenge", "submit", "--model", bundle, "--adv", files[3],
                         "--name", "late", "--attack", "again", "--ledger", ledger,
                         "--data-dir", DATA)
    assert code == 2 and "already submitted" in err
    code, board, _ = _main(capsys, "challenge", "board", "--ledger", ledger)
    assert code == 0
    rows = [ln for ln in board.splitlines() if re.match(r"\| \d+ \|", ln)]
    assert len(rows) == 6 and "noise \\| seed" in rows[0]
    accs = [float(re.findall(r"\| ([\d.]+)% \|", r)[0]) for r in rows]
    assert accs == sorted(accs)


def _child_append(barrier, ledger: str, k: int) -> None:
    barrier.wait(timeout=60)
    for i in range(20):
        append_entry(ledger, {"sha256": f"{k}-{i}", "name": f"p{k}", "accuracy": 0.5,
                              "model": {"manifest_sha256": "m"}})


def test_concurrent_appends_lose_no_entry(tmp_path):
    """6 processes x 20 appends, started together: all 120 land (without the lock, a run of
    this test kept 28 of 120)."""
    ledger = tmp_path / "ledger.json"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_child_append, args=(barrier, str(ledger), k)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6
    entries = read_ledger(ledger)["entries"]
    assert sorted(e["sha256"] for e in entries) == sorted(
        f"{k}-{i}" for k in range(6) for i in range(20))


def test_ledger_rules(tmp_path):
    ledger = tmp_path / "l.json"
    entry = {"sha256": "a" * 64, "name": "x", "attack": "y", "accuracy": 0.5, "n": 10,
             "date": "2026-01-01", "model": {"manifest_sha256": "m", "threat": {}}}
    append_entry(ledger, entry)
    with pytest.raises(DuplicateSubmission):
        append_entry(ledger, dict(entry))
    append_entry(ledger, {**entry, "model": {"manifest_sha256": "other"}})  # another model
    assert len(read_ledger(ledger)["entries"]) == 2
    assert render_board(read_ledger(ledger)).count("## ") == 2
    ledger.write_text("{not json")
    with pytest.raises(RobustOptError, match="not valid JSON"):
        append_entry(ledger, {**entry, "sha256": "b" * 64})
    assert ledger.read_text() == "{not json"  # a corrupt ledger is never overwritten


def test_zz_report_bad_input_count(capsys):
    """The number of distinct bad inputs the verifier rejected in this run (for the notes)."""
    if not REJECTED:
        pytest.skip("run the whole module to count the bad inputs")
    with capsys.disabled():
        print(f"\nchallenge verifier: {len(REJECTED)} distinct bad inputs rejected")
    assert len(REJECTED) >= 300, len(REJECTED)
