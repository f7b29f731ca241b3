"""Models, the registry and model files: shapes, normalisation, safe (pickle-free) loading."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from robustopt.errors import InputError, ModelFileError, RobustOptError
from robustopt.modelfile import (
    convert_state_dict,
    load_model,
    model_record,
    read_model_file,
    save_model,
)
from robustopt.models import (
    DATASET_STATS,
    MODEL_NAMES,
    Normalize,
    build_model,
    dataset_stats,
    model_arguments,
    model_spec,
)

MNIST = dict(zip(("mean", "std"), DATASET_STATS["mnist"], strict=True))
CIFAR = dict(zip(("mean", "std"), DATASET_STATS["cifar10"], strict=True))

# Small instances of every architecture: (name, stats, kwargs, input shape).
SMALL = [
    ("madry-mnist", MNIST, {}, (2, 1, 28, 28)),
    ("small-mnist", MNIST, {"width": 2, "fc": 50}, (2, 1, 28, 28)),
    ("trades-mnist", MNIST, {"fc": 20}, (2, 1, 28, 28)),
    ("preact-resnet18", CIFAR, {"num_classes": 7}, (2, 3, 32, 32)),
    ("wide-resnet", CIFAR, {"depth": 10, "width": 1}, (2, 3, 32, 32)),
    ("cifar-cnn", CIFAR, {"width": 8}, (2, 3, 32, 32)),
]
IDS = [s[0] for s in SMALL]


def make(name: str, stats: dict, kwargs: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **stats, **kwargs).eval()


def images(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ architectures


@pytest.mark.parametrize(("name", "stats", "kwargs", "shape"), SMALL, ids=IDS)
def test_output_shape_and_input_gradient(name, stats, kwargs, shape):
    model = make(name, stats, kwargs)
    x = images(shape).requires_grad_(True)
    out = model(x)
    assert out.shape == (shape[0], kwargs.get("num_classes", 10))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_registry_lists_every_model():
    assert set(MODEL_NAMES) == {"madry-mnist", "small-mnist", "trades-mnist", "preact-resnet18",
                                "wide-resnet", "cifar-cnn"}
    assert model_arguments("wide-resnet")["depth"] == 34


def test_parameter_counts_of_full_size_models():
    def count(name: str, **kwargs) -> int:
        with torch.device("meta"):  # no memory, no compute
            return sum(p.numel() for p in build_model(name, **CIFAR, **kwargs).parameters())

    assert count("wide-resnet", depth=28, width=10) == 36_479_194  # RobustBench's WRN-28-10
    assert count("wide-resnet", depth=34, width=10) == 46_160_474  # Madry et al.'s CIFAR model
    assert count("preact-resnet18") == 11_172_170


def test_madry_mnist_layers_match_the_challenge_model():
    net = build_model("madry-mnist", **MNIST).net
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net if isinstance(m, nn.Linear)]
    assert [tuple(c.weight.shape) for c in convs] == [(32, 1, 5, 5), (64, 32, 5, 5)]
    assert all(c.padding == (2, 2) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == 2
    assert [(f.in_features, f.out_features) for f in fcs] == [(3136, 1024), (1024, 10)]
    assert sum(p.numel() for p in net.parameters()) == 3_274_634


def test_small_mnist_is_the_wong_kolter_cnn():
    net = build_model("small-mnist", **MNIST).net
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (16, (4, 4), (2, 2), (1, 1)),
        (32, (4, 4), (2, 2), (1, 1)),
    ]
    assert [(f.in_features, f.out_features) for f in net if isinstance(f, nn.Linear)] == [
        (32 * 7 * 7, 100),
        (100, 10),
    ]


def test_trades_mnist_is_the_trades_small_cnn():
    net = build_model("trades-mnist", **MNIST).net
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (32, (3, 3), (0, 0)), (32, (3, 3), (0, 0)), (64, (3, 3), (0, 0)), (64, (3, 3), (0, 0))
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == 2
    assert [(f.in_features, f.out_features) for f in net if isinstance(f, nn.Linear)] == [
        (64 * 4 * 4, 200), (200, 200), (200, 10)
    ]
    torch.fx.symbolic_trace(net)  # one straight line of standard layers
    with pytest.raises(RobustOptError, match="input_size >= 16"):
        build_model("trades-mnist", **MNIST, input_size=12)


def test_cifar_cnn_stages_and_errors():
    net = build_model("cifar-cnn", **CIFAR, width=16).net
    convs = [m.out_channels for m in net if isinstance(m, nn.Conv2d)]
    assert convs == [16, 16, 16, 32, 32, 64, 64]
    assert [m for m in net if isinstance(m, nn.Linear)][0].in_features == 64
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net) == len(convs)
    torch.fx.symbolic_trace(net)  # one straight line of standard layers
    with pytest.raises(RobustOptError, match="divisible by 8"):
        build_model("cifar-cnn", **CIFAR, input_size=28)


def test_normalisation_is_the_first_layer():
    model = make("small-mnist", MNIST, {})
    assert isinstance(model[0], Normalize) and model[0].mean.shape == (1, 1, 1, 1)
    x = images((2, 1, 28, 28))
    expected = model.net((x - 0.1307) / 0.3081)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
    cifar = build_model("preact-resnet18", **CIFAR)
    assert cifar.normalize.std.shape == (1, 3, 1, 1)
    assert "normalize.mean" not in cifar.state_dict()  # the spec is the single source of truth


def test_models_are_plain_verifier_friendly_layers():
    allowed = (
        nn.Sequential, nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
        nn.BatchNorm2d, nn.Flatten, Normalize,
    )  # fmt: skip
    for name, stats, kwargs, _ in SMALL:
        for module in build_model(name, **stats, **kwargs).modules():
            assert isinstance(module, allowed) or type(module).__name__ == "PreActBlock"
            assert not getattr(module, "inplace", False)
    torch.fx.symbolic_trace(build_model("madry-mnist", **MNIST))


def test_wrong_channel_count_is_a_typed_error():
    model = build_model("preact-resnet18", **CIFAR)
    with pytest.raises(InputError, match="3 channel"):
        model(torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize(("name", "stats", "kwargs", "shape"), SMALL, ids=IDS)
def test_bf16_autocast_and_channels_last(name, stats, kwargs, shape):
    model = make(name, stats, kwargs)
    x = images(shape)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model_cl(x_cl), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model_cl(x_cl)
    assert torch.isfinite(low).all()
    scale = ref.abs().max().item() + 1.0
    assert (low.float() - ref).abs().max().item() < 0.1 * scale


# ----------------------------------------------------------------------------- errors


def test_build_model_errors_are_one_line_and_list_the_fix():
    with pytest.raises(RobustOptError, match="madry-mnist") as info:
        build_model("resnet50", **CIFAR)
    assert "\n" not in str(info.value)
    with pytest.raises(RobustOptError, match="valid arguments: .*depth=34"):
        build_model("wide-resnet", **CIFAR, dropout=0.3)
    with pytest.raises(RobustOptError, match="6n\\+4"):
        build_model("wide-resnet", **CIFAR, depth=29)
    with pytest.raises(RobustOptError, match="integer >= 1"):
        build_model("small-mnist", **MNIST, width=True)
    with pytest.raises(RobustOptError, match="integer >= 1"):
        build_model("small-mnist", **MNIST, width=0)
    with pytest.raises(RobustOptError, match="in_channels=1"):
        build_model("madry-mnist", **CIFAR, in_channels=1)
    with pytest.raises(RobustOptError, match="std must be positive"):
        build_model("madry-mnist", mean=(0.5,), std=(0.0,))
    with pytest.raises(RobustOptError, match="channel"):
        build_model("madry-mnist", mean=(0.5, 0.5), std=(0.5,))
    with pytest.raises(RobustOptError, match="cifar10"):
        dataset_stats("imagenet")
    with pytest.raises(RobustOptError, match="build_model"):
        model_spec(nn.Linear(2, 2))


def test_spec_is_recorded_with_defaults_filled_in():
    model = build_model("wide-resnet", **CIFAR, depth=10, width=1)
    spec = model_spec(model)
    assert spec == {
        "arch": "wide-resnet",
        "kwargs": {"depth": 10, "width": 1, "num_classes": 10, "in_channels": 3, "input_size": 32},
        "mean": list(CIFAR["mean"]),
        "std": list(CIFAR["std"]),
    }
    spec["kwargs"]["depth"] = 99  # a copy: the model's spec is untouched
    assert model_spec(model)["kwargs"]["depth"] == 10


# ------------------------------------------------------------------------- model files


def test_save_load_roundtrip_gives_identical_logits(tmp_path):
    model = make("wide-resnet", CIFAR, {"depth": 10, "width": 1})
    model.train()(images((4, 3, 32, 32), seed=5))  # move BN running stats off their init
    model.eval().to(memory_format=torch.channels_last)  # saving must cope with it
    path = tmp_path / "sub" / "m.safetensors"
    save_model(model, path, extra={"dataset": "cifar10", "eps": 8 / 255})
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp left behind

    loaded = load_model(path)
    assert not loaded.training and all(p.requires_grad for p in loaded.parameters())
    model.to(memory_format=torch.contiguous_format)  # same kernels on both sides
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = images((2, 3, 32, 32))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert model_spec(loaded) == model_spec(model)
    record, tensors = read_model_file(path)
    assert record["dataset"] == "cifar10" and record["format"] == "robustopt-model"
    assert record == model_record(model, {"dataset": "cifar10", "eps": 8 / 255})
    assert "net.0.weight" in tensors


def test_save_refuses_bad_paths_and_extras(tmp_path):
    model = make("small-mnist", MNIST, {})
    with pytest.raises(RobustOptError, match=r"\.safetensors"):
        save_model(model, tmp_path / "m.pt")
    with pytest.raises(RobustOptError, match="reserved"):
        save_model(model, tmp_path / "m.safetensors", extra={"arch": "x"})
    with pytest.raises(RobustOptError, match="JSON"):
        save_model(model, tmp_path / "m.safetensors", extra={"t": torch.zeros(1)})
    assert not list(tmp_path.iterdir())


def test_run_directory_picks_weights_and_model_json(tmp_path):
    last = make("small-mnist", MNIST, {}, seed=1)
    best = make("small-mnist", MNIST, {}, seed=2)
    save_model(last, tmp_path / "model.safetensors")
    save_model(best, tmp_path / "best.safetensors")
    x = images((2, 1, 28, 28))
    torch.testing.assert_close(load_model(tmp_path)(x), last(x))
    torch.testing.assert_close(load_model(tmp_path, which="best")(x), best(x))
    (tmp_path / "model.json").write_text(
        json.dumps({"default_weights": "best", "dataset": "mnist"})
    )
    torch.testing.assert_close(load_model(tmp_path)(x), best(x))
    torch.testing.assert_close(load_model(tmp_path, which="last")(x), last(x))
    assert read_model_file(tmp_path)[0]["dataset"] == "mnist"
    with pytest.raises(RobustOptError, match="run directories"):
        load_model(tmp_path / "model.safetensors", which="best")
    (tmp_path / "model.json").write_text(json.dumps({"default_weights": "first"}))
    with pytest.raises(ModelFileError, match="'last' or 'best'"):
        load_model(tmp_path)


def test_model_json_supplies_the_spec_for_bare_weights(tmp_path):
    model = make("madry-mnist", MNIST, {})
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors"
    )
    spec = model_spec(model)
    (tmp_path / "model.json").write_text(json.dumps(spec))
    x = images((2, 1, 28, 28))
    torch.testing.assert_close(load_model(tmp_path)(x), model(x))


def test_convert_state_dict_from_a_trusted_checkpoint(tmp_path):
    model = make("small-mnist", MNIST, {})
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}
    convert_state_dict(wrapped, "small-mnist", **MNIST, path=tmp_path / "c.safetensors")
    x = images((2, 1, 28, 28))
    torch.testing.assert_close(load_model(tmp_path / "c.safetensors")(x), model(x))


def test_torch_save_pickles_are_refused_with_a_recipe(tmp_path):
    model = make("small-mnist", MNIST, {})
    for name in ("m.pt", "m.pth", "m.ckpt", "m.bin", "zip.safetensors"):
        torch.save(model.state_dict(), tmp_path / name)
        with pytest.raises(ModelFileError, match="never loads pickles") as info:
            load_model(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and "convert_state_dict" in message
        assert "weights_only=True" in message


class _Evil:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("name", ["evil.pkl", "evil.safetensors", "model.safetensors"])
def test_malicious_pickle_is_never_unpickled(tmp_path, protocol, name):
    marker = tmp_path / "pwned"
    (tmp_path / name).write_bytes(pickle.dumps(_Evil(marker), protocol=protocol))
    target = tmp_path if name == "model.safetensors" else tmp_path / name
    with pytest.raises(ModelFileError):
        load_model(target)
    assert not marker.exists()


def test_truncated_garbage_and_missing_files_are_typed_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_model(make("small-mnist", MNIST, {}), good)
    data = good.read_bytes()
    cases = {
        "half.safetensors": data[: len(data) // 2],
        "short.safetensors": data[:-1],
        "header.safetensors": data[:100],
        "empty.safetensors": b"",
        "garbage.safetensors": os.urandom(4096),
        "text.safetensors": b"not a model at all, just text" * 10,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match="safetensors|truncated|corrupt") as info:
            load_model(tmp_path / name)
        assert "\n" not in str(info.value), name
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="no model.safetensors"):
        load_model(tmp_path)  # a directory, but not a run directory


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_only_ever_give_model_file_error(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        path.write_bytes(blob)
        with pytest.raises(ModelFileError):
            load_model(path)


def test_foreign_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, path, metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a robustopt model file"):
        load_model(path)


def _rewrite(path: Path, out: Path, **changes) -> None:
    """Copy a model file with its metadata record edited."""
    record, tensors = read_model_file(path)
    record.update(changes)
    save_file(tensors, out, metadata={"robustopt": json.dumps(record)})


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(make("small-mnist", MNIST, {}), path)
    _rewrite(path, tmp_path / "arch.safetensors", arch="madry-mnist", kwargs={})
    with pytest.raises(ModelFileError, match="do not match architecture 'madry-mnist'"):
        load_model(tmp_path / "arch.safetensors")
    _rewrite(path, tmp_path / "shape.safetensors", kwargs={"fc": 64})
    with pytest.raises(ModelFileError, match="wrong shape"):
        load_model(tmp_path / "shape.safetensors")
    # untrusted arguments that would need ~10^14 bytes: refused by shape, nothing allocated
    _rewrite(path, tmp_path / "huge.safetensors", kwargs={"width": 100_000})
    with pytest.raises(ModelFileError, match="wrong shape"):
        load_model(tmp_path / "huge.safetensors")
    _rewrite(path, tmp_path / "unknown.safetensors", arch="vgg16")
    with pytest.raises(ModelFileError, match="unknown model 'vgg16'"):
        load_model(tmp_path / "unknown.safetensors")
    _rewrite(path, tmp_path / "kw.safetensors", kwargs={"dropout": 1})
    with pytest.raises(ModelFileError, match="unknown argument"):
        load_model(tmp_path / "kw.safetensors")
    _rewrite(path, tmp_path / "future.safetensors", version=2)
    with pytest.raises(ModelFileError, match="upgrade robustopt"):
        load_model(tmp_path / "future.safetensors")
    _rewrite(path, tmp_path / "nomean.safetensors", mean="0.5")
    with pytest.raises(ModelFileError, match="'mean'"):
        load_model(tmp_path / "nomean.safetensors")


def test_wrapped_models_save_without_wrapper_prefixes(tmp_path):
    model = make("small-mnist", MNIST, {})
    path = tmp_path / "dp.safetensors"
    save_model(nn.DataParallel(model), path)
    assert all(k.startswith("net.") for k in read_model_file(path)[1])
    x = images((2, 1, 28, 28))
    torch.testing.assert_close(load_model(path)(x), model(x), rtol=0, atol=0)
