"""The PyTorch adapter: ``GradientSmoothing`` wraps any ``torch.optim.Optimizer``;
``SmoothedAdamW`` and ``SmoothedSGD`` compute and smooth the update in one pass.

    >>> from gradsmooth.backends.torch import GradientSmoothing
    >>> opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=3e-4), model, window=3)
    >>> print(opt.plan)   # what is smoothed

Works on CPU, CUDA and MPS tensors alike; nothing here is device-specific.
"""

from .blocks import canonical_name, module_sites
from .native import SmoothedAdamW, SmoothedSGD
from .optimizer import MODES, GradientSmoothing
from .pipeline import PipelineStages

__all__ = ["GradientSmoothing", "MODES", "PipelineStages", "SmoothedAdamW", "SmoothedSGD", "canonical_name",
           "module_sites"]
