"""Reference models: exact parameter counts, output shapes and the registry."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from sparsecore.models import ModelInfo, create_model, list_models, model_info


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Published sizes (LeCun 1998; Caffe LeNet-5 as used by SNIP and sparse momentum).
MNIST_COUNTS = {"lenet-300-100": 266_610, "lenet-5-caffe": 431_080}

# Computed once from these implementations with 10 classes. Every layer has the
# shape and bias setting of sparselearning/models.py, so the reference classes
# (AlexNet('s'|'b', 10), VGG16('C'|'D'|'like', 10), WideResNet(d, k, 10, 0.3))
# give the same counts. VGG16-C's first classifier layer takes 2048 inputs because
# its 1x1 convs keep padding=1 and grow the feature maps (reference behaviour).
CIFAR_COUNTS = {
    "alexnet-s": 5_077_066,
    "alexnet-b": 8_501_322,
    "vgg16-c": 11_323_466,
    "vgg16-d": 15_255_626,
    "vgg-like": 14_991_946,
    "wrn-16-8": 10_961_370,
    "wrn-16-10": 17_116_634,
    "wrn-22-8": 17_158_106,
    "wrn-28-2": 1_467_610,
}


def test_list_models_names():
    assert list_models() == [
        "lenet-300-100",
        "lenet-5-caffe",
        "alexnet-s",
        "alexnet-b",
        "vgg16-c",
        "vgg16-d",
        "vgg-like",
        "wrn-16-8",
        "wrn-16-10",
        "wrn-22-8",
        "wrn-28-2",
        "resnet-50",
        "gpt-tiny",
    ]


@pytest.mark.parametrize("name", sorted(MNIST_COUNTS))
def test_mnist_models_published_sizes_and_output(name):
    model = create_model(name)
    assert n_params(model) == MNIST_COUNTS[name]
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    # log-probabilities, as in the reference code
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_models_sizes_and_output(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert n_params(model) == CIFAR_COUNTS[name]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(2))


def test_cifar_model_trains_on_batch_of_two():
    model = create_model("wrn-28-2")
    loss = torch.nn.functional.nll_loss(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 7]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_num_classes_override():
    model = create_model("vgg16-c", num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    # only the last linear layer grows: 90 more outputs x (512 weights + 1 bias)
    assert n_params(model) == CIFAR_COUNTS["vgg16-c"] + 90 * 513
    assert create_model("lenet-300-100", num_classes=3)(torch.randn(4, 784)).shape == (4, 3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("lenet-300-100", num_classes=bad)


def test_unknown_model_lists_available_names():
    with pytest.raises(ValueError) as info:
        create_model("resnet-18")
    message = str(info.value)
    assert "resnet-18" in message
    for name in list_models():
        assert name in message
    with pytest.raises(ValueError, match="wrn-16-8"):
        model_info("nope")


def test_reference_script_aliases_and_case():
    assert model_info("LeNet5").name == "lenet-5-caffe"
    assert model_info("lenet300-100").name == "lenet-300-100"
    assert n_params(create_model("VGG-D")) == CIFAR_COUNTS["vgg16-d"]


def test_model_info():
    info = model_info("lenet-300-100")
    assert info == ModelInfo("lenet-300-100", (1, 28, 28), "mnist", 10, info.reference, "log_probs")
    assert "LeCun" in info.reference
    assert model_info("wrn-16-8").input_shape == (3, 32, 32)
    assert model_info("wrn-16-8").default_dataset == "cifar10"
    r50 = model_info("resnet-50")
    assert (r50.input_shape, r50.default_dataset, r50.num_classes, r50.outputs) == (
        (3, 224, 224),
        "imagenet",
        1000,
        "logits",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 5  # type: ignore[misc]
    for name in list_models():
        assert model_info(name).name == name
        assert model_info(name).reference


def test_wide_resnet_rejects_bad_depth():
    from sparsecore.models import WideResNet

    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(17, 2)


def test_resnet50_from_torchvision():
    pytest.importorskip("torchvision", reason="resnet-50 needs torchvision")
    with torch.device("meta"):  # shapes only: skips initialising 25M weights
        model = create_model("resnet-50", num_classes=10).eval()
        assert n_params(model) == 25_557_032 - 990 * 2049  # 25,557,032 with torchvision's 1000 classes
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_resnet50_without_torchvision_has_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        create_model("resnet-50")
