"""Which kind of weight decay an optimizer applies (gradsmooth.decay), told without importing it."""

import pytest

from gradsmooth.decay import COUPLED, DECOUPLED, check_decoupled_decay, classify_decay, decay_factor, decay_warning


def optimizer(name, module, bases=(), **attrs):
    """An instance of a stand-in optimizer class ``module.name`` with attributes ``attrs``."""
    return type(name, bases, {"__module__": module, **attrs})()


def cls(name, module, bases=()):
    return type(name, bases, {"__module__": module})


UNKNOWN = optimizer("Fancy", "mylib.optim")


def test_the_tables_are_disjoint_and_name_packages_and_classes():
    assert not DECOUPLED & COUPLED
    assert ("torch.optim", "AdamW") in DECOUPLED and ("torch.optim", "SGD") in COUPLED
    assert ("mlx.optimizers", "AdamW") in DECOUPLED and ("mlx.optimizers", "Adam") in COUPLED


# -- 1. the user's declaration --------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False])
def test_a_declared_bool_wins_over_everything(declared):
    opt = optimizer("SGD" if declared else "AdamW", "torch.optim", adam_w_mode=not declared)
    group = {"decoupled_weight_decay": not declared, "decoupled_decay": not declared, "decoupled": not declared}
    assert classify_decay(opt, group, declared) is declared


def test_a_declared_function_is_asked_with_the_group():
    seen = []

    def declared(group):
        seen.append(group)
        return group["weight_decay"] > 0

    group = {"weight_decay": 0.1, "decoupled_weight_decay": False}
    assert classify_decay(optimizer("SGD", "torch.optim"), group, declared) is True
    assert seen == [group] and seen[0] is group
    assert classify_decay(UNKNOWN, {"weight_decay": 0.0}, declared) is False


@pytest.mark.parametrize("answer", ["yes", None, float("nan"), float("inf"), [1.0]], ids=repr)
def test_a_declared_function_must_return_a_bool_or_a_finite_factor(answer):
    for decide in (classify_decay, decay_factor):
        with pytest.raises(TypeError) as info:
            decide(UNKNOWN, {}, lambda group: answer)
        assert str(info.value) == ("decoupled_decay(param_group) should return True, False or the decay factor "
                                   f"(a finite number) but returned: {answer!r}")


@pytest.mark.parametrize("answer", [0.97, 1, 0])
def test_a_declared_function_may_return_the_factor_itself(answer):
    group = {"weight_decay": 0.1, "lr": 0.5}
    assert classify_decay(UNKNOWN, group, lambda g: answer) is True  # a factor is decoupled
    assert decay_factor(UNKNOWN, group, lambda g: answer) == answer
    assert decay_factor(UNKNOWN, {"weight_decay": 0.0, "lr": 0.5}, lambda g: answer) == answer


def test_the_factor_follows_the_rule_read_from_the_group():
    adamw = optimizer("AdamW", "torch.optim")
    assert decay_factor(adamw, {"weight_decay": 0.1, "lr": 0.5}) == 1 - 0.5 * 0.1
    assert decay_factor(adamw, {"weight_decay": 0.0, "lr": 0.5}) == 1.0
    assert decay_factor(optimizer("SGD", "torch.optim"), {"weight_decay": 0.1, "lr": 0.5}) == 1.0  # coupled
    assert decay_factor(UNKNOWN, {"weight_decay": 0.1, "lr": 0.5}) is None  # warned about, treated as coupled
    assert decay_factor(UNKNOWN, {"weight_decay": 0.1, "lr": 0.5}, True) == 1 - 0.5 * 0.1
    assert decay_factor(adamw, {"weight_decay": 0.1, "lr": 0.5}, False) == 1.0


def test_timm_corrected_weight_decay_scales_by_lr_squared_over_the_peak():
    # timm >= 1.0.20 keeps the peak in the group; earlier releases read the optimizer's default lr
    lion = optimizer("Lion", "timm.optim.lion")
    group = {"weight_decay": 0.1, "lr": 0.25, "corrected_weight_decay": True, "max_lr_snapshot": 0.5}
    assert decay_factor(lion, group) == 1 - 0.25**2 / 0.5 * 0.1
    lion.defaults = {"lr": 1.0}
    group.pop("max_lr_snapshot")
    assert decay_factor(lion, group) == 1 - 0.25**2 / 1.0 * 0.1
    assert decay_factor(lion, {**group, "corrected_weight_decay": False}) == 1 - 0.25 * 0.1


def test_timm_adan_decays_proximally_unless_no_prox():
    adan = optimizer("Adan", "timm.optim.adan")
    assert decay_factor(adan, {"weight_decay": 0.1, "lr": 0.5, "no_prox": False}) == 1 / (1 + 0.5 * 0.1)
    assert decay_factor(adan, {"weight_decay": 0.1, "lr": 0.5, "no_prox": True}) == 1 - 0.5 * 0.1


# -- 2. flags in the param group ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["decoupled_weight_decay", "decoupled_decay", "decoupled"])
@pytest.mark.parametrize("flag", [True, False])
def test_a_group_flag_decides(key, flag):
    assert classify_decay(UNKNOWN, {key: flag}) is flag


def test_group_flags_are_read_in_order_and_win_over_optimizer_flags_and_class():
    opt = optimizer("AdamW", "torch.optim.adamw", adam_w_mode=True, adamw_mode=True)
    assert classify_decay(opt, {"decoupled_weight_decay": False, "decoupled_decay": True, "decoupled": True}) is False
    assert classify_decay(opt, {"decoupled_decay": False, "decoupled": True}) is False
    assert classify_decay(opt, {"decoupled": False}) is False


def test_a_group_flag_that_is_not_a_bool_is_passed_over():
    group = {"decoupled_weight_decay": None, "decoupled_decay": 1, "decoupled": "yes"}
    assert classify_decay(UNKNOWN, group) is None
    assert classify_decay(optimizer("SGD", "torch.optim"), group) is False
    assert classify_decay(UNKNOWN, {"decoupled_weight_decay": None, "decoupled": True}) is True


# -- 3. flags on the optimizer --------------------------------------------------------------------


@pytest.mark.parametrize("attr", ["adam_w_mode", "adamw_mode"])
@pytest.mark.parametrize("flag", [True, False])
def test_an_optimizer_flag_decides(attr, flag):
    assert classify_decay(optimizer("FusedAdam", "apex.optimizers", **{attr: flag}), {}) is flag


def test_optimizer_flags_are_read_in_order_and_win_over_the_class():
    assert classify_decay(optimizer("FusedAdam", "x", adam_w_mode=False, adamw_mode=True), {}) is False
    assert classify_decay(optimizer("AdamW", "torch.optim", adam_w_mode=False), {}) is False
    assert classify_decay(optimizer("SGD", "torch.optim", adamw_mode=True), {}) is True
    assert classify_decay(optimizer("FusedAdam", "x", adam_w_mode=1, adamw_mode=None), {}) is None


# -- 4. the class, by module prefix, along the MRO -------------------------------------------------


@pytest.mark.parametrize(
    "module, name, expected",
    [
        ("torch.optim.adamw", "AdamW", True),
        ("torch.optim", "AdamW", True),
        ("torch.optim.sgd", "SGD", False),
        ("timm.optim.adamw", "AdamW", True),
        ("timm.optim.lion", "Lion", True),
        ("bitsandbytes.optim.adamw", "PagedAdamW8bit", True),
        ("torchao.optim.adam", "AdamW8bit", True),
        ("lion_pytorch.lion_pytorch", "Lion", True),
        ("mlx.optimizers.optimizers", "AdamW", True),
        ("mlx.optimizers.optimizers", "Adam", False),
        ("mlx.optimizers.optimizers", "Muon", False),
        ("torch.optimx", "AdamW", None),  # a prefix ends at a dot
        ("torch", "AdamW", None),  # the table names torch.optim, not all of torch
        ("mylib.optim", "AdamW", None),  # the name alone is not enough
        ("timm.optim", "SGD", None),
    ],
)
def test_the_class_is_found_by_module_prefix_and_name(module, name, expected):
    assert classify_decay(optimizer(name, module), {}) is expected


def test_a_subclass_inherits_the_answer_of_its_nearest_known_base():
    adamw, sgd = cls("AdamW", "timm.optim.adamw"), cls("SGD", "torch.optim.sgd")
    assert classify_decay(optimizer("MyAdamW", "mylib.optim", (adamw,)), {}) is True
    assert classify_decay(optimizer("Deeper", "mylib", (cls("Mid", "mylib", (sgd,)),)), {}) is False
    # the nearest class along the MRO decides: itself first, then its bases in order
    assert classify_decay(optimizer("AdamW", "torch.optim.adamw", (sgd,)), {}) is True
    assert classify_decay(optimizer("Both", "mylib", (sgd, adamw)), {}) is False
    assert classify_decay(optimizer("Both", "mylib", (adamw, sgd)), {}) is True


def test_a_class_without_a_module_is_unknown():
    assert classify_decay(optimizer("AdamW", None), {}) is None


# -- 5. unknown -----------------------------------------------------------------------------------


def test_an_unknown_optimizer_without_flags_is_none():
    assert classify_decay(UNKNOWN, {}) is None
    assert classify_decay(UNKNOWN, {"weight_decay": 0.1, "lr": 1e-3}) is None
    assert classify_decay(object(), {}) is None


# -- check_decoupled_decay and the warning ---------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, False, len, lambda group: True], ids=repr)
def test_check_decoupled_decay_returns_none_a_bool_or_a_function(value):
    assert check_decoupled_decay(value) is value


@pytest.mark.parametrize("value", ["yes", 1, 0, 0.5, [True], {"decoupled": True}], ids=repr)
def test_check_decoupled_decay_refuses_anything_else(value):
    with pytest.raises(TypeError) as info:
        check_decoupled_decay(value)
    assert str(info.value) == (
        "decoupled_decay should be None, True, False or a function of the param group (torch) or of the optimizer "
        f"(MLX) but is: {value!r}"
    )


def test_decay_warning_names_the_class_and_the_option():
    message = decay_warning(UNKNOWN)
    assert message.startswith("gradsmooth cannot tell whether mylib.optim.Fancy applies its weight_decay decoupled ")
    assert "treated as coupled" in message and "Pass decoupled_decay=True" in message


def test_decay_warning_uses_the_qualified_name():
    class Outer:
        class Inner:
            pass

    Outer.Inner.__module__ = "mylib"
    assert "mylib.test_decay_warning_uses_the_qualified_name.<locals>.Outer.Inner applies" in decay_warning(Outer.Inner())
