"""Tests of the dataset layer, against the real offline copies in ../shared/data.

Nothing here may touch the network: every test runs with ROBUSTOPT_OFFLINE=1 and
``urlopen`` replaced by a function that fails the test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustopt.data import (
    DATASET_NAMES,
    Dataset,
    canonical_name,
    epoch_permutation,
    iterate_batches,
    load_dataset,
    random_crop_flip,
    resolve_cache_dir,
    resolve_data_dir,
)
from robustopt.data import cifar as cifar_module
from robustopt.data import download as download_module
from robustopt.data.download import Resource
from robustopt.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from robustopt.data.locate import download_allowed
from robustopt.errors import DataError, InputError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


def _no_network(*args, **kwargs):
    raise AssertionError("tests must not touch the network")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Private cache dir, offline, and no way to reach the network."""
    monkeypatch.setenv("ROBUSTOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTOPT_OFFLINE", "1")
    monkeypatch.delenv("ROBUSTOPT_DATA", raising=False)
    monkeypatch.setattr(download_module.urllib.request, "urlopen", _no_network)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip(f"offline datasets not found at {SHARED_DATA}")
    return SHARED_DATA


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# ---------------------------------------------------------------- real data


def test_mnist_real(shared_data):
    train = load_dataset("mnist", "train", data_dir=shared_data, download=False)
    test = load_dataset("MNIST", "test", data_dir=shared_data, download=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    assert train.images.flags.c_contiguous and train.labels.dtype == np.int64
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                  6265, 5851, 5949]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                 974, 1009]
    assert train.num_classes == 10 and train.shape == (1, 28, 28) and len(test) == 10000
    assert train.name == "mnist" and test.split == "test"
    x = train.images[:1000].astype(np.float64) / 255
    assert abs(x.mean() - 0.1307) < 0.01


def test_fashion_mnist_real(shared_data):
    for split, count in (("train", 6000), ("test", 1000)):
        ds = load_dataset("fashion_mnist", split, data_dir=shared_data, download=False)
        assert ds.name == "fashion-mnist" and ds.shape == (1, 28, 28)
        assert np.bincount(ds.labels).tolist() == [count] * 10
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


@pytest.fixture(scope="module")
def cifar_test(shared_data, tmp_path_factory):
    """CIFAR-10 test from the JPEG archive, loaded cold then warm with one cache dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTOPT_CACHE", str(tmp_path_factory.mktemp("cifar-cache")))
        start = time.perf_counter()
        first = load_dataset("cifar-10", "test", data_dir=shared_data, download=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        second = load_dataset("CIFAR10", "test", data_dir=shared_data, download=False)
        warm = time.perf_counter() - start
    print(f"\ncifar10 test: first load {cold:.2f} s, cached load {warm:.3f} s")
    return first, second, cold, warm


def test_cifar10_from_jpeg_archive(cifar_test):
    ds, _, _, _ = cifar_test
    assert ds.name == "cifar10" and ds.images.shape == (10000, 3, 32, 32)
    assert ds.images.dtype == np.uint8 and ds.images.flags.c_contiguous
    assert ds.classes == CIFAR_CLASSES
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    # Folder order is class-interleaved, so every prefix is class-balanced.
    assert ds.labels[:20].tolist() == list(range(10)) * 2
    mean = ds.images[:2000].astype(np.float64).mean(axis=(0, 2, 3)) / 255
    assert np.all(np.abs(mean - [0.49, 0.48, 0.45]) < 0.03)


def test_cifar10_cached_load_is_fast_and_identical(cifar_test):
    first, second, _, warm = cifar_test
    assert warm < 2.0
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.labels, second.labels)
    assert first.classes == second.classes


def test_tensors(cifar_test):
    ds = cifar_test[0]
    x, y = ds.tensors(n=8)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == ds.labels[:8].tolist()
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x * 255, torch.from_numpy(ds.images[:8]).float())
    y[0] = 7  # a copy: the dataset's labels stay untouched
    assert ds.labels[0] == 0
    assert ds.tensors(device="cpu")[0].shape[0] == 10000
    with pytest.raises(DataError):
        ds.tensors(n=10001)


# ---------------------------------------------------------------- names and places


def test_names_and_aliases():
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "cifar10")
    for alias in ("fashion_mnist", "FashionMNIST", "Fashion-MNIST", " fashionmnist "):
        assert canonical_name(alias) == "fashion-mnist"
    assert canonical_name("CIFAR-10") == "cifar10"
    assert canonical_name("Folder:/x/My Images") == "folder:/x/My Images"


def test_unknown_name_and_bad_split(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet", data_dir=tmp_path)
    message = _one_line_error(excinfo)
    assert all(name in message for name in DATASET_NAMES)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", "val", data_dir=tmp_path)
    assert "'train' or 'test'" in _one_line_error(excinfo)


def test_resolve_dirs(monkeypatch, tmp_path):
    assert resolve_data_dir(tmp_path / "a") == tmp_path / "a"
    monkeypatch.setenv("ROBUSTOPT_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("ROBUSTOPT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "robustopt" / "data"
    assert resolve_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("ROBUSTOPT_CACHE")
    assert resolve_cache_dir() == tmp_path / "xdg" / "robustopt" / "cache"


def test_download_default_follows_offline_env(monkeypatch):
    assert download_allowed(None) is False  # the fixture sets ROBUSTOPT_OFFLINE=1
    assert download_allowed(True) is True
    monkeypatch.delenv("ROBUSTOPT_OFFLINE")
    assert download_allowed(None) is True


# ---------------------------------------------------------------- IDX


def _idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", IMAGES_MAGIC, *images.shape) + images.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", LABELS_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes()


def _tiny_mnist(folder: Path, gz: bool, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    folder.mkdir(parents=True, exist_ok=True)
    for stem, blob in ((f"{split}-images-idx3-ubyte", _idx_images(images)),
                       (f"{split}-labels-idx1-ubyte", _idx_labels(labels))):
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return images, labels


@pytest.mark.parametrize("gz, sub", [(True, "MNIST"), (False, "MNIST"), (False, "MNIST/raw"),
                                     (True, "FashionMNIST/raw")])
def test_idx_plain_and_gzip(tmp_path, gz, sub):
    images, labels = _tiny_mnist(tmp_path / sub, gz)
    name = "fashion-mnist" if sub.startswith("Fashion") else "mnist"
    ds = load_dataset(name, "test", data_dir=tmp_path, download=False)
    assert np.array_equal(ds.images[:, 0], images) and ds.labels.tolist() == labels.tolist()


def test_idx_truncated(tmp_path):
    _tiny_mnist(tmp_path / "MNIST", gz=False)
    path = tmp_path / "MNIST" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    message = _one_line_error(excinfo)
    assert str(path) in message and "truncated" in message and "re-download" in message


def test_idx_truncated_gzip(tmp_path):
    _tiny_mnist(tmp_path / "MNIST", gz=True)
    path = tmp_path / "MNIST" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert str(path) in _one_line_error(excinfo)


def test_idx_wrong_magic_and_count_mismatch(tmp_path):
    _tiny_mnist(tmp_path / "MNIST", gz=False)
    labels_path = tmp_path / "MNIST" / "t10k-labels-idx1-ubyte"
    images_path = tmp_path / "MNIST" / "t10k-images-idx3-ubyte"
    good_labels = labels_path.read_bytes()
    labels_path.write_bytes(images_path.read_bytes())  # images where labels belong
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    message = _one_line_error(excinfo)
    assert "magic" in message and str(labels_path) in message
    labels_path.write_bytes(_idx_labels(np.array([1, 2, 3])))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert "5 images" in _one_line_error(excinfo)
    labels_path.write_bytes(good_labels + b"\0")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_missing_files_offline(tmp_path):
    for name, folder in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        with pytest.raises(DataError) as excinfo:
            load_dataset(name, "train", data_dir=tmp_path)  # offline through the env
        message = _one_line_error(excinfo)
        assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
        assert str(tmp_path / folder) in message and "ROBUSTOPT_DATA" in message
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    message = _one_line_error(excinfo)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message


# ---------------------------------------------------------------- download (no network)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_verifies_and_writes_atomically(monkeypatch, tmp_path):
    payload = b"dataset bytes"
    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda request, timeout: _FakeResponse(payload))
    good = Resource("f.gz", "https://example.invalid/f.gz", hashlib.md5(payload).hexdigest(),
                    hashlib.sha256(payload).hexdigest())
    assert download_module.download(good, tmp_path / "d").read_bytes() == payload
    bad = Resource("g.gz", "https://example.invalid/g.gz", "0" * 32)
    with pytest.raises(DataError) as excinfo:
        download_module.download(bad, tmp_path / "d")
    assert "checksum" in _one_line_error(excinfo)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["f.gz"]  # no leftovers


def test_download_failure_says_where_to_put_files(monkeypatch, tmp_path):
    def unreachable(request, timeout):
        raise download_module.urllib.error.URLError("Name or service\nnot known")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    message = _one_line_error(excinfo)
    assert "download failed" in message and "t10k-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "MNIST") in message
    assert list((tmp_path / "MNIST").iterdir()) == []  # no partial files


# ---------------------------------------------------------------- image folders


def _png(color: tuple[int, ...] | int, mode: str = "RGB", size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


_TREE = {"zebra": [(10, 20, 30), (11, 21, 31)], "ant": [(1, 2, 3)], "mole": [(5, 5, 5)]}


def _write_tree(root: Path, split: str = "train") -> None:
    for cls, colors in _TREE.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i, color in enumerate(colors):
            (root / split / cls / f"{i:03d}.png").write_bytes(_png(color))


def _check_tree(ds: Dataset) -> None:
    assert ds.classes == ("ant", "mole", "zebra")
    assert ds.images.shape == (4, 3, 4, 6)
    # interleaved: rank 0 of ant, mole, zebra, then rank 1 of zebra
    assert ds.labels.tolist() == [0, 1, 2, 2]
    assert ds.images[:, :, 0, 0].tolist() == [[1, 2, 3], [5, 5, 5], [10, 20, 30], [11, 21, 31]]


def test_image_folder_directory(tmp_path):
    _write_tree(tmp_path / "imgs")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", "train")
    assert ds.name == f"folder:{tmp_path / 'imgs'}" and ds.split == "train"
    _check_tree(ds)
    with pytest.raises(DataError, match="no 'test' split"):
        load_dataset(f"folder:{tmp_path / 'imgs'}", "test")


@pytest.mark.parametrize("suffix, top", [(".tar", ""), (".tar.gz", "my-set/")])
def test_image_folder_tar(tmp_path, suffix, top):
    _write_tree(tmp_path / "src")
    archive = tmp_path / f"set{suffix}"
    with tarfile.open(archive, "w:gz" if suffix.endswith("gz") else "w") as tar:
        tar.add(tmp_path / "src" / "train", arcname=f"{top}train")
    _check_tree(load_dataset(f"FOLDER:{archive}", "train"))


def test_image_folder_grayscale_and_mixed_sizes(tmp_path):
    for i, cls in enumerate(("b", "a")):
        (tmp_path / "g" / "test" / cls).mkdir(parents=True)
        (tmp_path / "g" / "test" / cls / "x.png").write_bytes(_png(40 * i, mode="L"))
    ds = load_dataset(f"folder:{tmp_path / 'g'}", "test")
    assert ds.images.shape == (2, 1, 4, 6) and ds.labels.tolist() == [0, 1]
    assert ds.images[:, 0, 0, 0].tolist() == [40, 0]
    (tmp_path / "g" / "test" / "a" / "y.png").write_bytes(_png(1, mode="L", size=(5, 5)))
    with pytest.raises(DataError) as excinfo:
        load_dataset(f"folder:{tmp_path / 'g'}", "test")
    assert "one size" in _one_line_error(excinfo)


def test_image_folder_missing(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset(f"folder:{tmp_path / 'nope'}")
    assert "not found" in _one_line_error(excinfo)


# ---------------------------------------------------------------- cache


def test_corrupt_cache_is_rebuilt(tmp_path):
    _write_tree(tmp_path / "imgs")
    name = f"folder:{tmp_path / 'imgs'}"
    first = load_dataset(name, "train")
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1
    for junk in (b"not a zip file", entries[0].read_bytes()[:200]):
        entries[0].write_bytes(junk)
        again = load_dataset(name, "train")
        assert np.array_equal(again.images, first.images) and again.classes == first.classes
        with np.load(entries[0], allow_pickle=False) as archive:  # rewritten, sound
            assert np.array_equal(archive["images"], first.images)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".npz"]


def test_cache_follows_source_changes(tmp_path):
    _write_tree(tmp_path / "imgs")
    name = f"folder:{tmp_path / 'imgs'}"
    assert load_dataset(name, "train").images[0, :, 0, 0].tolist() == [1, 2, 3]
    (tmp_path / "imgs" / "train" / "ant" / "000.png").write_bytes(_png((9, 9, 9)))
    assert load_dataset(name, "train").images[0, :, 0, 0].tolist() == [9, 9, 9]


# ---------------------------------------------------------------- CIFAR python batches


def _cifar_batch(n: int, seed: int, bytes_keys: bool = False) -> tuple[bytes, np.ndarray, list]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
             "filenames": [f"img_{i}.png" for i in range(n)]}
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    return pickle.dumps(batch, protocol=2), data, labels


def _patch_md5(monkeypatch, **blobs: bytes) -> None:
    table = dict(cifar_module.BATCH_MD5)
    table.update({name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()})
    monkeypatch.setattr(cifar_module, "BATCH_MD5", table)


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_batches_directory(monkeypatch, tmp_path, bytes_keys):
    blob, data, labels = _cifar_batch(7, seed=1, bytes_keys=bytes_keys)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    _patch_md5(monkeypatch, test_batch=blob)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert ds.images.shape == (7, 3, 32, 32) and ds.classes == CIFAR_CLASSES
    assert np.array_equal(ds.images.reshape(7, -1), data) and ds.labels.tolist() == labels


def test_cifar_batches_tarball_preferred_over_jpeg(monkeypatch, tmp_path):
    blobs = {f"data_batch_{i}": _cifar_batch(3, seed=i)[0] for i in range(1, 6)}
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"never read")
    _patch_md5(monkeypatch, **blobs)
    ds = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert ds.images.shape == (15, 3, 32, 32)
    expected = np.concatenate([pickle.loads(b)["data"] for b in blobs.values()])
    assert np.array_equal(ds.images.reshape(15, -1), expected)


def _py2_style_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 cPickle wrote the official files (str payloads)."""

    def s(text: str) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(text)]) + text.encode()

    raw = images.tobytes()
    rows, cols = images.shape
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s("b")
             + b"\x87R(K\x01" + b"M" + struct.pack("<H", rows) + b"M" + struct.pack("<H", cols)
             + b"\x86cnumpy\ndtype\n" + s("u1") + b"K\x00K\x01\x87R(K\x03" + s("|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
             + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (b"\x80\x02}(" + s("batch_label") + s("training batch 1 of 5") + s("data") + array
            + s("labels") + label_list + b"u.")


def test_cifar_python2_pickle_format(monkeypatch, tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    labels = [9, 0, 3, 3]
    blob = _py2_style_batch(images, labels)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    _patch_md5(monkeypatch, test_batch=blob)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert np.array_equal(ds.images.reshape(4, -1), images) and ds.labels.tolist() == labels


class _Boom:
    """Unpickling this creates ``path`` (a directory): the marker of code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_cifar_wrong_checksum_refused_before_unpickling(monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": _Boom(str(marker)), "labels": []}, protocol=2)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=False)
    message = _one_line_error(excinfo)
    assert "md5" in message and "test_batch" in message
    assert not marker.exists()
    # Even a file whose checksum were accepted cannot run code: the unpickler refuses.
    _patch_md5(monkeypatch, test_batch=evil)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=False)
    assert "not allowed" in _one_line_error(excinfo)
    assert not marker.exists()


def test_cifar_batch_refuses_object_arrays(monkeypatch, tmp_path):
    blob = pickle.dumps({"data": np.array([1, "x"], dtype=object), "labels": [0]}, protocol=2)
    with pytest.raises(DataError):
        cifar_module.parse_batch(blob, "object-batch")


# ---------------------------------------------------------------- Dataset value


def test_dataset_validates_arrays():
    images = np.zeros((2, 1, 3, 3), np.uint8)
    with pytest.raises(DataError):
        Dataset("x", "test", images.astype(np.float32), np.zeros(2, np.int64), ("a",))
    with pytest.raises(DataError):
        Dataset("x", "test", images, np.zeros(3, np.int64), ("a",))
    with pytest.raises(DataError):
        Dataset("x", "test", images, np.array([0, 1]), ("a",))


# ---------------------------------------------------------------- batching


def _reference_crop_flip(x, pad, seed):
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    dy = torch.randint(2 * pad + 1, (n,), generator=g)
    dx = torch.randint(2 * pad + 1, (n,), generator=g)
    flip = torch.randint(2, (n,), generator=g)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    out = []
    for i in range(n):
        window = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(window.flip(-1) if flip[i] else window)
    return torch.stack(out), flip


def test_random_crop_flip_matches_reference():
    x = torch.arange(12 * 2 * 5 * 4, dtype=torch.float32).reshape(12, 2, 5, 4) + 1
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(3))
    expected, flip = _reference_crop_flip(x, 2, 3)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, expected)
    assert 0 < int(flip.sum()) < 12  # both flipped and unflipped examples occur
    assert (out == 0).any()  # some window reaches into the zero padding


def test_random_crop_flip_reproducible_and_dtype():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    c = random_crop_flip(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.uint8
    flips_only = random_crop_flip(x, 0, torch.Generator().manual_seed(0))
    for i in range(16):
        assert torch.equal(flips_only[i], x[i]) or torch.equal(flips_only[i], x[i].flip(-1))
    with pytest.raises(InputError):
        random_crop_flip(x, -1, torch.Generator())


def test_iterate_batches():
    x = torch.arange(10, dtype=torch.float32)[:, None]
    y = torch.arange(10)
    plain = list(iterate_batches(x, y, 4, shuffle=False))
    assert [len(b[1]) for b in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in plain]), y)
    assert [len(b[1]) for b in iterate_batches(x, y, 4, shuffle=False, drop_last=True)] == [4, 4]
    runs = [[b[1] for b in iterate_batches(x, y, 3, shuffle=True,
                                           generator=torch.Generator().manual_seed(5))]
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    seen = torch.cat(runs[0])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for bx, by in iterate_batches(x, y, 3, shuffle=True):
        assert torch.equal(bx[:, 0].long(), by)  # pairs stay together
    order = epoch_permutation(10, seed=1, epoch=0)
    ordered = torch.cat([b[1] for b in iterate_batches(x, y, 4, shuffle=False, order=order)])
    assert torch.equal(ordered, order)
    with pytest.raises(InputError):
        list(iterate_batches(x, y[:5], 4, shuffle=False))


def test_epoch_permutation():
    p = epoch_permutation(1000, seed=7, epoch=3, device="cpu")
    assert sorted(p.tolist()) == list(range(1000)) and p.dtype == torch.int64
    torch.manual_seed(123)  # the global RNG state must not matter
    assert torch.equal(p, epoch_permutation(1000, seed=7, epoch=3, device="cpu"))
    assert not torch.equal(p, epoch_permutation(1000, seed=7, epoch=4, device="cpu"))
    assert not torch.equal(p, epoch_permutation(1000, seed=8, epoch=3, device="cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batching_on_cuda_with_cpu_generator():
    x = torch.arange(6 * 3 * 8 * 8, dtype=torch.float32).reshape(6, 3, 8, 8)
    out = random_crop_flip(x.cuda(), 2, torch.Generator().manual_seed(3))
    assert out.is_cuda and torch.equal(out.cpu(), random_crop_flip(
        x, 2, torch.Generator().manual_seed(3)))
    y = torch.arange(6)
    batches = list(iterate_batches(x.cuda(), y.cuda(), 4, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)))
    assert all(bx.is_cuda and by.is_cuda for bx, by in batches)
    assert epoch_permutation(6, 1, 2, "cuda").is_cuda
