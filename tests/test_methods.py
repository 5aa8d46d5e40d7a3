"""The method registry, method options and the MACs budget."""

import dataclasses
import json
import types

import keras
import pytest

import tfgancompress as tgc
from training import budget, methods, train
from training.budget import Budget, BudgetError
from training.methods import base


def test_registry_finds_the_baselines_and_rejects_unknown_names():
    assert {"distill", "uniform"} <= set(methods.available())
    assert methods.available() == sorted(methods.available())
    assert isinstance(methods.get("distill"), methods.Method)
    with pytest.raises(ValueError, match=r"Unknown method 'nope'.*distill.*uniform"):
        methods.get("nope")


def test_options_defaults_parsing_and_errors():
    default = methods.get("distill")
    assert default.options.lambda_recon is None and default.options.lambda_gan == 1.0
    from_text = methods.get("distill", "lambda_recon=50, lambda_gan=0.5")
    from_list = methods.get("distill", ["lambda_gan=0.5", "lambda_recon=50"])
    from_mapping = methods.get("distill", {"lambda_recon": 50, "lambda_gan": 0.5})
    from_kwargs = methods.get("distill", lambda_gan=0.5, lambda_recon=50.0)
    assert from_text.options.lambda_recon == 50.0
    assert isinstance(from_text.options.lambda_recon, float)
    assert from_text == from_list == from_mapping == from_kwargs
    assert len({from_text, from_list, from_mapping, from_kwargs, default}) == 2
    assert methods.get("distill", "lambda_recon=none") == default

    with pytest.raises(
        ValueError, match=r"\['lambda_l1'\].*known: colour_skip, lambda_distill"
    ):
        methods.get("distill", "lambda_l1=3")
    with pytest.raises(ValueError, match="'lambda_gan' of method 'distill' must be"):
        methods.get("distill", "lambda_gan=lots")
    with pytest.raises(ValueError, match="must be float, got 'none'"):
        methods.get("distill", "lambda_gan=none")
    with pytest.raises(ValueError, match="cannot be None"):
        methods.get("distill", lambda_gan=None)
    with pytest.raises(ValueError, match="lambda_recon must be >= 0"):
        methods.get("uniform", lambda_recon=-1)
    with pytest.raises(ValueError, match="key=value"):
        methods.get("uniform", "lambda_recon")
    with pytest.raises(ValueError, match="given twice"):
        methods.get("uniform", "lambda_gan=1,lambda_gan=2")


def test_description_is_stable_and_names_every_option():
    method = methods.get("distill", "lambda_gan=0.5,lambda_distill=2")
    assert method.description == (
        "distill(lambda_distill=2.0,lambda_gan=0.5,lambda_recon=None,selection='auto')"
    )
    assert json.loads(json.dumps(method.describe())) == {
        "method": "distill",
        "options": {
            "lambda_distill": 2.0,
            "lambda_gan": 0.5,
            "lambda_recon": None,
            "selection": "auto",
        },
    }
    assert hash(method) == hash(
        methods.get("distill", lambda_distill=2, lambda_gan=0.5)
    )


def test_an_added_key_neutral_option_leaves_run_keys_as_they_were():
    @dataclasses.dataclass(frozen=True)
    class Knobs:
        rate: float = 1.0

    class Before(methods.Method):
        name = "knobs"
        Options = Knobs

        def build(self, teacher, setup):
            raise NotImplementedError

        def finetune_trainer(self, student, teacher, setup, steps):
            raise NotImplementedError

    class Added(Before):  # the same method once it gained an option
        @dataclasses.dataclass(frozen=True)
        class Options(Knobs):
            width: int = methods.key_neutral(3)

    class Plain(Before):  # the option declared plainly
        @dataclasses.dataclass(frozen=True)
        class Options(Knobs):
            width: int = 3

    budget = types.SimpleNamespace(macs=1000)
    task = types.SimpleNamespace(key="data")
    config = train.settings({})

    def key(method):
        return train.run_key(method, budget, config, task)

    assert key(Added()) == key(Added("width=3")) == key(Before())
    assert Added().description == Before().description == "knobs(rate=1.0)"
    assert Added().option_values() == {"rate": 1.0, "width": 3}  # for reports
    assert Added(width=4).describe()["options"] == {"rate": 1.0, "width": 4}
    assert key(Added(width=4)) != key(Before())
    assert key(Added(rate=2.0)) == key(Before(rate=2.0)) != key(Before())
    assert key(Plain()) != key(Before())


def test_distills_colour_skip_option_is_key_neutral_and_turns_the_skip_off():
    budget = types.SimpleNamespace(macs=1000)
    task = types.SimpleNamespace(key="data")
    config = train.settings({})
    default, off = methods.get("distill"), methods.get("distill", "colour_skip=false")
    assert default.colour_skip and not off.colour_skip
    assert "colour_skip" not in default.describe()["options"]
    assert off.describe()["options"]["colour_skip"] is False
    assert train.run_key(default, budget, config, task) == train.run_key(
        methods.get("distill", colour_skip=True), budget, config, task
    )
    assert train.run_key(off, budget, config, task) != train.run_key(
        default, budget, config, task
    )


def test_a_detail_skip_enters_run_keys_only_when_on():
    budget = types.SimpleNamespace(macs=1000)
    task = types.SimpleNamespace(key="data")
    distill = methods.get("distill")
    off = train.run_settings(distill, budget, train.settings({}), task)
    on = train.run_settings(distill, budget, train.settings({"detail_skip": 2.0}), task)
    assert "detail_skip" not in off and on == {**off, "detail_skip": 2.0}


def test_option_types_bool_int_str_and_optional():
    @dataclasses.dataclass(frozen=True)
    class Options:
        flag: bool = False
        count: int = 3
        label: str = "a"
        limit: float | None = None

    class Knobs(methods.Method):
        name = "knobs"

        def build(self, teacher, setup):
            raise NotImplementedError

        def finetune_trainer(self, student, teacher, setup, steps):
            raise NotImplementedError

    Knobs.Options = Options
    knobs = Knobs("flag=yes,count=7,label=b,limit=0.5")
    assert knobs.options == Options(True, 7, "b", 0.5)
    assert Knobs({"flag": False, "limit": 2}).options.limit == 2.0
    with pytest.raises(ValueError, match="'count' of method 'knobs' must be int"):
        Knobs("count=2.5")
    with pytest.raises(ValueError, match="must be bool"):
        Knobs({"flag": 1})


def test_register_checks_and_unregister():
    class Tiny(methods.Method):
        name = "tiny_test_method"

        def build(self, teacher, setup):
            raise NotImplementedError

        def finetune_trainer(self, student, teacher, setup, steps):
            raise NotImplementedError

    methods.register(Tiny)
    try:
        assert "tiny_test_method" in methods.available()
        methods.register(Tiny)  # the same class again: replaced, no error

        class Other(Tiny):
            pass

        with pytest.raises(ValueError, match="taken by"):
            methods.register(Other)
    finally:
        methods.unregister("tiny_test_method")
    assert "tiny_test_method" not in methods.available()

    class Unfinished(methods.Method):
        name = "unfinished"

        def build(self, teacher, setup):
            raise NotImplementedError

    with pytest.raises(ValueError, match="cannot be made"):
        methods.register(Unfinished)

    class BadName(Tiny):
        name = "Bad-Name"

    with pytest.raises(ValueError, match="lower-case identifier"):
        methods.register(BadName)
    with pytest.raises(TypeError):
        methods.register(object)


def test_split_steps_shares_the_budget():
    class Searching(methods.get("distill").__class__):
        search_share = 0.3

    method = Searching()
    assert method.split_steps(10) == {"search": 3, "finetune": 7}
    assert methods.get("uniform").split_steps(10) == {"search": 0, "finetune": 10}


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(0)
    return tgc.models.resnet_generator(ngf=8, n_blocks=1, affine=True, name="t")


def test_budget_from_ratio_or_absolute(teacher):
    teacher_macs = tgc.profile(teacher, (256, 256, 3)).macs
    by_ratio = Budget.resolve(teacher, macs_ratio=20)
    assert by_ratio.macs == int(teacher_macs / 20)
    assert by_ratio.ratio == pytest.approx(20, rel=1e-6)
    absolute = Budget.resolve(teacher, macs_ratio=20, macs_budget=0.05)
    assert absolute.macs == 50_000_000
    assert absolute.minus(1_000_000).macs == 49_000_000
    with pytest.raises(BudgetError, match="--macs_ratio must be >= 1"):
        Budget.resolve(teacher, macs_ratio=0.5)
    with pytest.raises(BudgetError, match="must be > 0"):
        Budget.resolve(teacher, macs_budget=-1)
    with pytest.raises(BudgetError, match="costs 0.100 G MACs.*over its budget"):
        absolute.check_met(100_000_000, "The student")


def test_keep_ratio_for_budget_is_the_largest_that_fits(teacher):
    target = Budget.resolve(teacher, macs_ratio=20)
    ratio, gated = budget.keep_ratio_for_budget(teacher, target, tolerance=0.01)
    macs = tgc.profile(tgc.slim(gated), (256, 256, 3)).macs
    assert macs <= target.macs
    assert 0.03 < ratio < 0.35
    # A ratio 0.05 larger no longer fits.
    wider = tgc.pruning.l1_prune(teacher, ratio + 0.05)
    assert tgc.profile(wider, (256, 256, 3)).macs > target.macs
    assert budget.keep_ratio_for_budget(teacher, Budget(10**15))[0] == 1.0


def test_unreachable_budget_says_what_is_reachable(teacher):
    smallest = budget.smallest_gated_macs(teacher)
    assert smallest == methods.get("uniform").smallest_macs(teacher, (256, 256, 3))
    tiny = Budget.resolve(teacher, macs_budget=smallest / 2e9)
    with pytest.raises(BudgetError) as error:
        tiny.check_reachable(smallest, "method 'distill'")
    message = str(error.value)
    assert "out of reach for method 'distill'" in message
    ratio = tiny.teacher_macs / smallest
    assert f"--macs_ratio <= {ratio:.1f}" in message
    assert f"--macs_budget >= {smallest / 1e9:.4f}" in message
    with pytest.raises(BudgetError, match="out of reach for pruning"):
        budget.keep_ratio_for_budget(teacher, tiny)


def test_setup_validates():
    target = Budget(1000)
    assert base.Setup(target).mode == "paired"
    with pytest.raises(ValueError, match="mode must be one of"):
        base.Setup(target, mode="cycle")
    with pytest.raises(BudgetError, match="must be > 0"):
        Budget(0)
