"""Registry of the reference models: names, metadata and construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .alexnet import AlexNet
from .gpt import TinyGPT
from .lenet import LeNet5Caffe, LeNet300100
from .resnet import resnet50
from .vgg import VGG16
from .wide_resnet import WideResNet

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]

_LECUN_1998 = "LeCun et al. 1998, Gradient-based learning applied to document recognition"
_CAFFE_LENET = "LeNet-5 as in Caffe's MNIST example (Jia et al. 2014); used by Lee et al. 2019 (SNIP)"
_DETTMERS_2019 = "Dettmers & Zettlemoyer 2019, Sparse Networks from Scratch: Faster Training without Losing Performance"
_SNIP_2019 = "Lee et al. 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity"
_WRN_2016 = "Zagoruyko & Komodakis 2016, Wide Residual Networks"
_RESNET_2016 = "He et al. 2016, Deep Residual Learning for Image Recognition"
_GPT2_2019 = "Radford et al. 2019, Language Models are Unsupervised Multitask Learners (GPT-2), at byte level"


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of a reference model.

    Attributes:
        name: Registry name, e.g. ``"lenet-300-100"``.
        input_shape: Shape of one input sample, e.g. ``(1, 28, 28)`` (``(128,)``
            bytes for ``gpt-tiny``).
        default_dataset: Dataset the model is trained on in the papers
            (``"mnist"``, ``"cifar10"`` or ``"imagenet"``; ``"python-stdlib"`` for ``gpt-tiny``).
        num_classes: Default number of output classes (the vocabulary of a language model).
        reference: The paper that defines or uses the architecture.
        outputs: ``"log_probs"`` (log-softmax output, as in the sparse_learning
            reference code) or ``"logits"``. ``F.cross_entropy`` gives the right
            loss for both, since log-softmax is idempotent.
        task: ``"classification"`` or ``"language-model"``: the
            :attr:`sparsecore.data.Dataset.task` of the datasets the model fits.
    """

    name: str
    input_shape: tuple[int, ...]
    default_dataset: str
    num_classes: int
    reference: str
    outputs: str = "log_probs"
    task: str = "classification"


_MNIST = (1, 28, 28)
_CIFAR = (3, 32, 32)

_MODELS: dict[str, tuple[ModelInfo, Callable[[int], nn.Module]]] = {
    "lenet-300-100": (ModelInfo("lenet-300-100", _MNIST, "mnist", 10, _LECUN_1998), LeNet300100),
    "lenet-5-caffe": (ModelInfo("lenet-5-caffe", _MNIST, "mnist", 10, _CAFFE_LENET), LeNet5Caffe),
    "alexnet-s": (ModelInfo("alexnet-s", _CIFAR, "cifar10", 10, _DETTMERS_2019), lambda c: AlexNet("s", c)),
    "alexnet-b": (ModelInfo("alexnet-b", _CIFAR, "cifar10", 10, _DETTMERS_2019), lambda c: AlexNet("b", c)),
    "vgg16-c": (ModelInfo("vgg16-c", _CIFAR, "cifar10", 10, _SNIP_2019), lambda c: VGG16("C", c)),
    "vgg16-d": (ModelInfo("vgg16-d", _CIFAR, "cifar10", 10, _SNIP_2019), lambda c: VGG16("D", c)),
    "vgg-like": (ModelInfo("vgg-like", _CIFAR, "cifar10", 10, _SNIP_2019), lambda c: VGG16("like", c)),
    "wrn-16-8": (ModelInfo("wrn-16-8", _CIFAR, "cifar10", 10, _WRN_2016), lambda c: WideResNet(16, 8, c)),
    "wrn-16-10": (ModelInfo("wrn-16-10", _CIFAR, "cifar10", 10, _WRN_2016), lambda c: WideResNet(16, 10, c)),
    "wrn-22-8": (ModelInfo("wrn-22-8", _CIFAR, "cifar10", 10, _WRN_2016), lambda c: WideResNet(22, 8, c)),
    "wrn-28-2": (ModelInfo("wrn-28-2", _CIFAR, "cifar10", 10, _WRN_2016), lambda c: WideResNet(28, 2, c)),
    "resnet-50": (ModelInfo("resnet-50", (3, 224, 224), "imagenet", 1000, _RESNET_2016, "logits"), resnet50),
    "gpt-tiny": (ModelInfo("gpt-tiny", (128,), "python-stdlib", 256, _GPT2_2019, "logits", "language-model"),
                 lambda c: TinyGPT(vocab_size=c)),
}

# Names used by the sparse_learning reference scripts (mnist_cifar/main.py).
_ALIASES = {"lenet300-100": "lenet-300-100", "lenet5": "lenet-5-caffe", "vgg-c": "vgg16-c", "vgg-d": "vgg16-d"}


def _resolve(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(_MODELS)}")
    return key


def list_models() -> list[str]:
    """Lists the registry names of the reference models.

    Returns:
        The names, in registry order (MNIST models, CIFAR-10 models, ImageNet, the byte-level GPT).
    """
    return list(_MODELS)


def model_info(name: str) -> ModelInfo:
    """Returns the metadata of a reference model.

    Args:
        name: A name from :func:`list_models` (case-insensitive; the reference
            scripts' names ``lenet5``, ``lenet300-100``, ``vgg-c``, ``vgg-d`` also work).

    Returns:
        The model's :class:`ModelInfo`.

    Raises:
        ValueError: If the name is unknown; the message lists the available names.
    """
    return _MODELS[_resolve(name)][0]


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Builds a freshly initialised reference model.

    Args:
        name: A name from :func:`list_models` (see :func:`model_info` for aliases).
        num_classes: Output classes; defaults to ``model_info(name).num_classes``.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ValueError: If the name is unknown or ``num_classes`` is not positive.
        ImportError: For ``resnet-50`` when torchvision is missing.

    Example:
        >>> model = create_model("lenet-300-100")
        >>> sum(p.numel() for p in model.parameters())
        266610
    """
    info, factory = _MODELS[_resolve(name)]
    if num_classes is None:
        num_classes = info.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return factory(num_classes)
