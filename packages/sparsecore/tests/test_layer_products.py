"""The ``layer_products`` hook: an algorithm's own forward asks a plugin for sparse products."""

import pytest
import sparsecore
import torch
from sparsecore.products import SparseProducts, layer_products
from torch import nn


class Products:
    def weight_operand(self, weight, mask, x, density):
        return weight * mask()

    def mm_weight_t(self, x, operand):
        return x @ operand.t()

    def mm_weight(self, grad, operand):
        return grad @ operand

    def grad_weight(self, grad, x, density):
        return None


class Offers:
    def __init__(self, answer):
        self.answer = answer

    @sparsecore.hookimpl
    def layer_products(self, sparsifier, layer):
        return self.answer


class AsksForProducts(sparsecore.Algorithm):
    name = "asks"

    def __init__(self):
        self.seen = {}

    @sparsecore.hookimpl
    def layer_forward(self, sparsifier, layer):
        self.seen[layer.name] = layer_products(sparsifier, layer)
        return None


def _build(*plugins):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    algorithm = AsksForProducts()
    sparsecore.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm=algorithm, density=0.5,
                          plugins=list(plugins))
    return algorithm


def test_the_algorithm_gets_the_plugins_products_per_layer():
    products = Products()
    assert isinstance(products, SparseProducts)
    assert _build(Offers(products)).seen == {"0": products, "2": products}


def test_no_plugin_means_no_products():
    assert _build().seen == {"0": None, "2": None}


def test_an_answer_without_the_protocol_is_refused_naming_the_plugin():
    with pytest.raises(sparsecore.HookResultError, match="hook 'layer_products' of plugin .*does not implement "
                                                          "sparsecore.products.SparseProducts"):
        _build(Offers(object()))
