"""The papers' architectures, a registry to build them by name, and the normalisation layer.

Every model maps float32 NCHW images in [0, 1] to logits; normalisation is its first layer.
"""

from robustopt.models.cifar_cnn import cifar_cnn
from robustopt.models.mnist import madry_mnist, small_mnist, trades_mnist
from robustopt.models.normalize import DATASET_STATS, Normalize, check_stats, dataset_stats
from robustopt.models.registry import (
    MODEL_NAMES,
    SPEC_ATTR,
    build_model,
    model_arguments,
    model_spec,
    unwrap_model,
)
from robustopt.models.resnet import PreActBlock, preact_resnet18
from robustopt.models.wide_resnet import wide_resnet

__all__ = [
    "DATASET_STATS",
    "MODEL_NAMES",
    "SPEC_ATTR",
    "Normalize",
    "PreActBlock",
    "build_model",
    "cifar_cnn",
    "check_stats",
    "dataset_stats",
    "madry_mnist",
    "model_arguments",
    "model_spec",
    "preact_resnet18",
    "small_mnist",
    "trades_mnist",
    "unwrap_model",
    "wide_resnet",
]
