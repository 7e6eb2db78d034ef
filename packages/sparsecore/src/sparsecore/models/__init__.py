"""Reference models of the sparse-training papers.

Architectures follow Tim Dettmers' ``sparse_learning`` reference code
(``sparselearning/models.py``): LeNet-300-100 and LeNet-5-Caffe for MNIST;
AlexNet-s/b, VGG16-C/D, VGG-like and wide ResNets for CIFAR-10; ResNet-50 for
ImageNet comes from torchvision. Models other than ResNet-50 return
log-probabilities, like the reference code. ``gpt-tiny`` is a small byte-level
GPT for the ``python-stdlib`` language-model dataset; it returns logits.

Example:
    >>> from sparsecore.models import create_model, model_info
    >>> model = create_model("wrn-16-8")
    >>> model_info("wrn-16-8").input_shape
    (3, 32, 32)
"""

from .alexnet import AlexNet
from .gpt import CausalSelfAttention, GPTBlock, TinyGPT
from .lenet import LeNet5Caffe, LeNet300100
from .registry import ModelInfo, create_model, list_models, model_info
from .resnet import resnet50
from .vgg import VGG16
from .wide_resnet import WideBasicBlock, WideResNet

__all__ = [
    "VGG16",
    "AlexNet",
    "CausalSelfAttention",
    "GPTBlock",
    "LeNet5Caffe",
    "LeNet300100",
    "ModelInfo",
    "TinyGPT",
    "WideBasicBlock",
    "WideResNet",
    "create_model",
    "list_models",
    "model_info",
    "resnet50",
]
