"""The native steps' per-member coefficients (backends/torch/coefficients.py): torch's AdamW and SGD
hyperparameters as the kernels read them."""

import math

import torch

from gradsmooth.backends.torch.coefficients import adamw_coefficients, coefficient_table, sgd_coefficients


def test_adamw_coefficients_per_member_and_step_with_the_sign_of_maximize():
    a = {"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.5}
    b = {**a, "lr": torch.tensor(0.2), "maximize": True}
    rows = adamw_coefficients([a, a, b], [1.0, 1.0, 3.0])
    assert rows[0] is rows[1]  # one group at one step: one row
    assert rows[0] == [1 - 0.9, 0.99, 1 - 0.99, math.sqrt(1 - 0.99), 1e-8, -0.1 / (1 - 0.9), 1.0, 1 - 0.1 * 0.5]
    lr = float(torch.tensor(0.2))  # a tensor lr, read as a float
    assert rows[2][5] == -lr / (1 - 0.9**3) and rows[2][6] == -1.0 and rows[2][7] == 1 - lr * 0.5


def test_sgd_coefficients_at_the_first_step_and_after():
    g = {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01, "nesterov": False}
    first, later = sgd_coefficients([g, g], [True, False])
    assert first == [0.01, 0.0, 1.0, 0.0, 1.0, -0.1, 1.0]  # the buffer starts as the gradient itself
    assert later == [0.01, 0.9, 0.8, 0.0, 1.0, -0.1, 1.0]
    (nesterov,) = sgd_coefficients([{**g, "nesterov": True, "dampening": 0.0}], [False])
    assert nesterov[3:5] == [1.0, 0.9]
    (plain,) = sgd_coefficients([{**g, "momentum": 0.0, "maximize": True}], [True])
    assert plain[1:5] == [0.0, 1.0, 1.0, 0.0] and plain[6] == -1.0


def test_the_table_is_coefficient_major_in_the_compute_dtype():
    table = coefficient_table([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], torch.zeros(2, dtype=torch.bfloat16))
    assert table.dtype == torch.float32 and table.view(-1).tolist() == [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]
