"""A smoothed optimizer step, in both modes, over a dict of named float64 parameters.

``groups`` is a list of name lists, each ordered by depth (one role of one stack):
the members a depth operator mixes. Names outside every group are stepped as the base
optimizer steps them.

mode="update" (the paper's):

```
decay_l, delta_l = base step of member l        (delta without decoupled decay)
theta_l <- decay_l * theta_l + sum_j A[l, j] delta_j
```

mode="gradient":

```
g~_l = sum_j A[l, j] g_j;   theta <- base step on g~
```

Members without a gradient at a step are left out; the window is taken over the rest.
"""

import numpy as np

from .window import window_smooth


def smooth_groups(arrays, groups, **window):
    """A new dict where each group's members present in ``arrays`` are smoothed together."""
    out = dict(arrays)
    for names in groups:
        present = [name for name in names if arrays.get(name) is not None]
        if len(present) < 2:
            continue
        stack = np.stack([arrays[name] for name in present])  # (n, ...)
        smoothed = window_smooth(stack, **window)  # (n, ...)
        for i, name in enumerate(present):
            out[name] = smoothed[i]
    return out


class Smoothed:
    """Gradient Smoothing around a reference base optimizer.

    ``window``, ``kernel``, ``boundary``, ``sigma``, ``normalize`` are those of
    ``window_smooth``; ``alpha`` is a number or a function of the step count ``t``
    (steps taken before this one). ``decoupled=False`` treats the base's decoupled decay
    as part of its step (``delta + (decay - 1) * theta`` is smoothed), as a wrapper told
    ``decoupled_decay=False`` does.
    """

    def __init__(self, base, groups, mode="update", window=3, kernel="uniform", boundary="renormalize",
                 alpha=1.0, sigma=None, normalize=True, decoupled=True):
        self.base, self.groups, self.mode = base, [list(g) for g in groups], mode
        self.decoupled = decoupled
        self.window = dict(window=window, kernel=kernel, boundary=boundary, sigma=sigma, normalize=normalize)
        self.alpha = alpha
        self.t = 0

    def step(self, params, grads):
        """Return the new parameters (a new dict); ``params`` and ``grads`` are not changed."""
        alpha = self.alpha(self.t) if callable(self.alpha) else self.alpha
        self.t += 1
        if self.mode == "gradient":
            return self.base.step(params, smooth_groups(grads, self.groups, alpha=alpha, **self.window))
        decays, deltas = {}, {}
        for name, param in params.items():
            if grads.get(name) is not None:
                decays[name], deltas[name] = self.base.update(name, param, grads[name])
                if not self.decoupled:  # the decay is part of the step: smoothed with it
                    decays[name], deltas[name] = 1.0, deltas[name] + (decays[name] - 1.0) * param
        deltas = smooth_groups(deltas, self.groups, alpha=alpha, **self.window)
        new = dict(params)
        for name in deltas:
            new[name] = decays[name] * params[name] + deltas[name]
        return new
