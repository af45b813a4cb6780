"""Optimizer classes made for frameworks that build the optimizer (backends/torch/factory.py)."""

import torch

from gradsmooth.backends.torch.factory import factory_class, made_by_factory


def test_a_factory_class_is_a_subclass_named_for_what_it_builds():
    seen = []
    made = factory_class(torch.optim.SGD, "test", lambda self, params, **kw: seen.append((params, kw)), "SGD(...)")
    assert issubclass(made, torch.optim.SGD) and made.__name__ == "SGD[test]" and "SGD(...)" in made.__doc__
    made([1], lr=2)
    assert seen == [([1], {"lr": 2})]
    assert made_by_factory(made) is torch.optim.SGD and made_by_factory(torch.optim.SGD) is torch.optim.SGD
