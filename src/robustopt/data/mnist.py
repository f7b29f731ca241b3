"""MNIST and Fashion-MNIST: where their IDX files live, where to fetch them, their digests.

Digests are torchvision's ``resources`` values, which /work/shared/data/README.md also
lists for byte-identical copies; sha256 values are those of the same canonical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustopt.data.download import Resource, download
from robustopt.data.idx import read_idx_pair
from robustopt.data.locate import first_existing
from robustopt.errors import DataError


@dataclass(frozen=True)
class IdxSpec:
    """Everything that differs between the IDX datasets."""

    folder: str  # sub-directory of the data dir (torchvision's class name)
    resources: tuple[Resource, ...]  # train images, train labels, test images, test labels
    classes: tuple[str, ...]


def _resources(base_url: str, digests: tuple[tuple[str, str, str], ...]) -> tuple[Resource, ...]:
    return tuple(Resource(name, base_url + name, md5, sha) for name, md5, sha in digests)


MNIST = IdxSpec(
    folder="MNIST",
    resources=_resources("https://ossci-datasets.s3.amazonaws.com/mnist/", (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
         "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
         "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
         "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    )),
    classes=tuple(str(d) for d in range(10)),
)

FASHION_MNIST = IdxSpec(
    folder="FashionMNIST",
    resources=_resources("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", (
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
         "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
         "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
         "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    )),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"),
)


def _find(spec: IdxSpec, data_dir: Path, gz_name: str) -> Path | None:
    """Uncompressed first (faster), then .gz; in ``<folder>/`` and torchvision's ``raw/``."""
    raw_name = gz_name.removesuffix(".gz")
    folders = (data_dir / spec.folder, data_dir / spec.folder / "raw")
    return first_existing(f / n for n in (raw_name, gz_name) for f in folders)


def load_idx_dataset(
    spec: IdxSpec, split: str, data_dir: Path, allow_download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N,1,28,28]`` and labels of one split, downloading missing files if allowed."""
    wanted = spec.resources[:2] if split == "train" else spec.resources[2:]
    found = {r.filename: _find(spec, data_dir, r.filename) for r in wanted}
    missing = [r for r in wanted if found[r.filename] is None]
    if missing:
        target = data_dir / spec.folder
        names = ", ".join(r.filename for r in missing)
        if not allow_download:
            raise DataError(
                f"{spec.folder} {split} files not found: put {names} in {target} (or pass "
                "--data-dir / set ROBUSTOPT_DATA to a directory holding them, or allow download)"
            )
        try:
            for resource in missing:
                found[resource.filename] = download(resource, target)
        except DataError as exc:
            raise DataError(
                f"{spec.folder} not found and download failed ({exc}); put {names} in {target} "
                "(or pass --data-dir / set ROBUSTOPT_DATA)"
            ) from exc
    images_path, labels_path = (found[r.filename] for r in wanted)
    return read_idx_pair(images_path, labels_path, len(spec.classes))
