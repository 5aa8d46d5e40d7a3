"""`gan_compression`: GAN Compression (Li et al., CVPR 2020), METHODS.md §1.

The method's phases in the shared pipeline (`training.pipeline`):

1. build: the **student** is the teacher cut to `width` of its channels,
   each layer keeping its top filters by L1 norm (residual channels ranked
   together; `tgc.models.supernet.l1_cut`), as a once-for-all **supernet**
   (`supernet.to_supernet`): every sub-network shares the first k channels
   of each layer, and the first channels are the best by L1. Its
   configuration space has, for each of the paper's 8 numbers, the student's
   width times each of `choices`. `Student.kept` (set here, saved with
   checkpoints) names the teacher channel of every supernet channel.
2. search phase, one trainer, `fit` for the search share of the steps:
   - **pre-distillation**, its first part: the whole student (the
     supernet's largest configuration) trained with
     `lambda_gan * L_GAN + lambda_recon * |G(x) - y*|_1 + lambda_distill *
     sum_taps MSE(1x1(f_s), f_t)` over the four taps (down2 and blocks 3,
     6, 9), the 1x1 mappers (with bias) trained with the generator;
   - **once-for-all training**, the rest: the same loss, but before every
     step `SampleConfigs` switches the supernet to a configuration drawn
     from `(seed, step)` (one XLA program serves every configuration; the
     mappers read the full-width taps, whose switched-off channels are 0,
     so they follow the sampled width). Each part has its own cosine
     learning-rate cycle (the paper trains them as two runs);
   - **search**, when the fit ends (`SubnetSearch`): every candidate within
     the MACs budget (and, with `max_latency_ms`, the measured LiteRT
     latency budget), and using at least `budget_floor` of it, is scored
     by its PSNR to the targets of `Setup.validation`, images of the
     *training* photos; evolution (`tgc.search.evolution`) or a
     brute-force grid; the supernet is left at the best configuration.
     The trained supernet, the search log (`search.json`/`.png`) and the
     latency cache go to `Setup.work_dir`.
3. slim: the best sub-network as a plain model (`supernet.extract`).
4. refit (`refit` option): `"teacher"` re-initialises the chosen widths
   from the teacher (its top filters by L1) and the pipeline refits them by
   least squares, so the search chooses the architecture only;
   `"subnet"` refits the trained sub-network's convolutions; `"none"` keeps
   the trained weights as they are (the paper).
5. fine-tune the sub-network with the same loss.

Modes, with the paper's defaults: `"paired"` (pix2pix: `y*` the real
target, conditional D, hinge loss, `lambda_recon` 100, `lambda_distill` 1)
and `"unpaired"` (CycleGAN pseudo-pairs: `y*` the teacher's output,
unconditional D, LSGAN, 10 and 0.01). The vintage task trains on exact
pseudo-pairs in paired mode.

Steps: of the pipeline's `steps`, `predistill_share + supernet_share` go to
the search phase and the rest to fine-tuning; within the search phase the
two parts share it in that proportion. The paper's **fast** variant
(`fast=True`) skips the pre-distilled student: the supernet trains straight
from the teacher's L1 cut for the whole search phase.

The paper searches 100 x 500 (population x generations); the defaults
here (20 x 10, cached scores) fit a few minutes on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import keras
import numpy as np
import tensorflow as tf

import tfgancompress as tgc
from tfgancompress.models import supernet
from tfgancompress.models.supernet import ChannelConfig, ConfigSpace, ResnetFamily
from training import callbacks as callbacks_lib
from training.methods import base, register
from training.trainer import AdversarialTrainer

REFITS = ("teacher", "subnet", "none")
SEARCHES = ("evolution", "brute_force")
GAN_LOSSES = ("hinge", "lsgan", "vanilla")


def parse_choices(text: str) -> tuple[float, ...]:
    """`"1,0.75,0.5"` -> `(1.0, 0.75, 0.5)`: fractions in (0, 1].

    Raises:
        ValueError: On an empty list or a value outside (0, 1].
    """
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError as error:
        raise ValueError(
            f"choices are comma-separated fractions, got {text!r}."
        ) from error
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise ValueError(f"choices must be fractions in (0, 1], got {text!r}.")
    return values


def scaled_config(config, fraction: float) -> ChannelConfig:
    """Every number of `config` times `fraction`, rounded, at least 1."""
    channels = ChannelConfig.of(config).channels
    return ChannelConfig(tuple(max(1, round(c * fraction)) for c in channels))


def config_space(largest, choices) -> ConfigSpace:
    """The space whose numbers are `largest`'s times each of `choices`.

    Args:
        largest: The supernet's largest configuration.
        choices: Fractions in (0, 1] (a sequence or `"1,0.75,0.5"`).

    Example:

    >>> str(config_space("32_32_32_32_32_32_32_32", "1,0.5").smallest())
    '16_16_16_16_16_16_16_16'
    """
    fractions = parse_choices(choices) if isinstance(choices, str) else choices
    channels = ChannelConfig.of(largest).channels
    return ConfigSpace(
        tuple(tuple(max(1, round(c * f)) for f in fractions) for c in channels)
    )


class SampleConfigs(keras.callbacks.Callback):
    """Before every training step, switches the supernet to that step's config.

    Steps before `start_step` train the largest configuration (GAN
    Compression's pre-distillation of the whole student); from then on
    each step's configuration is `space.sample(step, seed)`, a pure
    function of the step, so a resumed run samples what the killed one
    would have. With `max_macs`, a draw over the budget is redrawn (from
    `(seed + k, step)`, up to 100 times) so that training concentrates on
    the sub-networks the search can choose.

    Args:
        net: The supernet the trainer trains.
        space: The configuration space.
        seed: Seed of the draws.
        start_step: First step that samples (before it: the largest).
        max_macs: Optional MACs bound of the sampled configurations.
        macs: `config -> MACs`, needed with `max_macs`.
    """

    def __init__(
        self,
        net: keras.Model,
        space: ConfigSpace,
        seed: int = 0,
        start_step: int = 0,
        max_macs: int | None = None,
        macs=None,
    ):
        super().__init__()
        if max_macs is not None and macs is None:
            raise ValueError("SampleConfigs: max_macs needs macs=config -> MACs.")
        self.net = net
        self.space = space
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.max_macs = max_macs
        self.macs = macs
        self._current = None

    def config_at(self, step: int) -> ChannelConfig:
        """The configuration trained at `step`."""
        if step < self.start_step:
            return self.space.largest()
        for attempt in range(100):
            config = self.space.sample(step, self.seed + attempt)
            if self.max_macs is None or self.macs(config) <= self.max_macs:
                return config
        return self.space.smallest()

    def on_train_batch_begin(self, batch, logs=None):
        config = self.config_at(int(callbacks_lib.training_step(self.model)))
        if config != self._current:
            supernet.set_config(self.net, config)
            self._current = config


class SubnetScorer:
    """Mean PSNR of a supernet's sub-networks to validation targets.

    Calling it with a configuration switches the supernet to it and runs
    the validation inputs through one compiled program (every configuration
    shares it).

    Args:
        net: The supernet.
        inputs: Validation inputs `(N, H, W, C)`.
        targets: What the student should output for them.
        batch_size: Images per forward pass.
        jit_compile: Compile the forward pass with XLA.
    """

    def __init__(
        self,
        net: keras.Model,
        inputs: np.ndarray,
        targets: np.ndarray,
        batch_size: int = 8,
        jit_compile: bool = True,
    ):
        self.net = net
        self.inputs = np.asarray(inputs, np.float32)
        self.targets = np.asarray(targets, np.float32)
        if self.inputs.shape[:-1] != self.targets.shape[:-1] or not len(self.inputs):
            raise ValueError(
                f"Validation inputs {self.inputs.shape} and targets "
                f"{self.targets.shape} must be non-empty, paired image batches."
            )
        self.batch_size = int(batch_size)
        self._forward = tf.function(
            lambda x: net(x, training=False), jit_compile=jit_compile
        )

    def outputs(self) -> np.ndarray:
        """The supernet's outputs on the inputs, at its current widths."""
        return np.concatenate(
            [
                np.asarray(self._forward(self.inputs[i : i + self.batch_size]))
                for i in range(0, len(self.inputs), self.batch_size)
            ]
        )

    def __call__(self, config) -> float:
        supernet.set_config(self.net, config)
        return float(np.mean(tgc.metrics.psnr(self.targets, self.outputs())))


@register
class GanCompression(base.Method):
    """Pre-distil, train a once-for-all supernet, search it, fine-tune."""

    name = "gan_compression"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """The method's knobs (module docstring for the phases).

        Attributes:
            width: The student's (supernet's largest) widths as a fraction
                of the teacher's (the paper: 0.5, ngf 32 from 64).
            choices: Candidate widths of each configuration number, as
                fractions of the student's (the paper's channels-32 space
                is `1,0.75,0.5`; a plain ResNet at 1/20 of its teacher's
                MACs needs 0.375 and 0.25 too).
            fast: The paper's fast variant: no pre-distillation, the
                supernet trains from the teacher's L1 cut at once.
            predistill_share: Share of the steps pre-distilling.
            supernet_share: Share of the steps training the supernet
                (with `predistill_share`, half the steps search and half
                fine-tune the chosen sub-network: at 300 steps the only
                setting measured to beat both baselines, README "GAN
                Compression").
            sample_within_budget: Redraw sampled configurations over the
                MACs budget (the paper samples the whole space).
            search: `"evolution"` or `"brute_force"` (whole grid).
            population: Evolution's population.
            generations: Evolution's generations.
            mutation_ratio: Share of each generation made by mutation.
            parent_ratio: Share of the population kept as parents.
            mutate_prob: Chance a mutation redraws each number.
            max_latency_ms: Measured fp32 LiteRT latency budget of the
                sub-network at the budget's input shape (2 threads), on top
                of the MACs budget; `None`: MACs only.
            budget_floor: Least share of the budget a candidate must use:
                of `max_latency_ms` if set, else of the MACs budget (0: no
                floor; not applied to a given `config`). A briefly trained
                supernet's scores barely rank sizes, so without a floor
                the search lands where most feasible configurations are
                (at 1/20 of the vintage teacher: 85% of the budget). A
                latency floor is checked by timing: every configuration
                drawn under the MACs budget is exported once (cached).
            latency_cache: JSON file of measured latencies; `None`:
                `<work_dir>/latency.json` (in memory without a work dir).
            latency_runs: Timed LiteRT runs per configuration (median).
            config: Skip the search and take this configuration (e.g. one
                `python -m training.search` found); it must fit the budget.
            refit: `"teacher"`, `"subnet"` or `"none"` (module docstring).
            lambda_recon: L1 to the target; `None`: 100 paired, 10 unpaired.
            lambda_distill: Feature distillation; `None`: 1 paired, 0.01
                unpaired.
            lambda_gan: The adversarial term.
            gan_loss: `"hinge"`, `"lsgan"` or `"vanilla"`; `None`: hinge
                paired, LSGAN unpaired.
        """

        width: float = 0.5
        choices: str = "1,0.75,0.5,0.375,0.25"
        fast: bool = False
        predistill_share: float = 0.2
        supernet_share: float = 0.3
        sample_within_budget: bool = False
        search: str = "evolution"
        population: int = 20
        generations: int = 10
        mutation_ratio: float = 0.5
        parent_ratio: float = 0.25
        mutate_prob: float = 0.2
        max_latency_ms: float | None = None
        budget_floor: float = 0.9
        latency_cache: str | None = None
        latency_runs: int = 10
        config: str | None = None
        refit: str = "teacher"
        lambda_recon: float | None = None
        lambda_distill: float | None = None
        lambda_gan: float = 1.0
        gan_loss: str | None = None

        def __post_init__(self):
            base.check_non_negative(self, "gan_compression")
            parse_choices(self.choices)
            if not 0.0 <= self.budget_floor <= 1.0:
                raise ValueError(
                    "gan_compression budget_floor must be in [0, 1], got "
                    f"{self.budget_floor}."
                )
            if not 0.0 < self.width <= 1.0:
                raise ValueError(
                    f"gan_compression width must be in (0, 1], got {self.width}."
                )
            shares = self.predistill_share + self.supernet_share
            if not 0.0 < shares <= 1.0:
                raise ValueError(
                    "gan_compression predistill_share + supernet_share must be in "
                    f"(0, 1], got {shares}."
                )
            for key, allowed in (
                ("search", SEARCHES),
                ("refit", REFITS),
                ("gan_loss", (*GAN_LOSSES, None)),
            ):
                if getattr(self, key) not in allowed:
                    raise ValueError(
                        f"gan_compression {key} must be one of {allowed}, got "
                        f"{getattr(self, key)!r}."
                    )
            if self.config is not None:
                ChannelConfig.parse(self.config)
            if self.population < 2 or self.latency_runs < 1:
                raise ValueError(
                    "gan_compression needs population >= 2 and latency_runs >= 1."
                )

    # Sizes ---------------------------------------------------------------

    def student_config(self, teacher: keras.Model) -> ChannelConfig:
        """The student's widths: the teacher's times `width`."""
        return scaled_config(supernet.largest_config(teacher), self.options.width)

    def space(self, largest) -> ConfigSpace:
        """The configuration space of a supernet whose largest config is `largest`."""
        return config_space(largest, self.options.choices)

    def smallest_macs(self, teacher, input_shape) -> int:
        family = ResnetFamily.of(teacher)
        smallest = self.space(self.student_config(teacher)).smallest()
        return supernet.config_macs(smallest, input_shape, family)

    def split_steps(self, steps: int) -> dict[str, int]:
        """`predistill_share + supernet_share` of the steps search, at least 1."""
        shares = self.options.predistill_share + self.options.supernet_share
        search = min(steps, max(1, round(shares * steps)))
        return {"search": search, "finetune": steps - search}

    def predistill_steps(self, search_steps: int) -> int:
        """Steps of the search phase that pre-distil (0 in the fast variant)."""
        if self.options.fast:
            return 0
        shares = self.options.predistill_share + self.options.supernet_share
        return round(search_steps * self.options.predistill_share / shares)

    # Phases --------------------------------------------------------------

    def build(self, teacher, setup):
        config = self.student_config(teacher)
        student, kept = supernet.l1_cut(teacher, config)
        net = supernet.to_supernet(student, name=f"{teacher.name}_supernet")
        return base.Student(
            net,
            base.discriminator(setup, teacher.output_shape[-1]),
            kept=kept,
        )

    def _gan_loss(self, setup) -> str:
        if self.options.gan_loss is not None:
            return self.options.gan_loss
        return "hinge" if setup.mode == "paired" else "lsgan"

    def _trainer(self, student, teacher, setup, g_optimizer, d_optimizer):
        trainer = AdversarialTrainer(
            student.generator,
            student.discriminator,
            teacher=teacher,
            mode=setup.mode,
            mapper_bias=True,
        )
        trainer.compile(
            g_optimizer=g_optimizer,
            d_optimizer=d_optimizer,
            gan_loss=self._gan_loss(setup),
            lambda_gan=self.options.lambda_gan,
            lambda_recon=self.options.lambda_recon,
            lambda_distill=self.options.lambda_distill,
            jit_compile=setup.jit_compile,
        )
        return trainer

    def _search_optimizer(self, setup, steps: int) -> keras.optimizers.Adam:
        """Adam with one cosine cycle for pre-distillation, one for the supernet."""
        first = self.predistill_steps(steps)
        if 0 < first < steps:
            schedule = keras.optimizers.schedules.CosineDecayRestarts(
                setup.learning_rate, first, t_mul=(steps - first) / first, m_mul=1.0
            )
        else:
            schedule = keras.optimizers.schedules.CosineDecay(
                setup.learning_rate, max(1, steps)
            )
        return keras.optimizers.Adam(schedule, beta_1=0.5)

    def search_trainer(self, student, teacher, setup, steps):
        """Pre-distillation then once-for-all training, in one compiled trainer."""
        return self._trainer(
            student,
            teacher,
            setup,
            self._search_optimizer(setup, steps),
            self._search_optimizer(setup, steps),
        )

    def search_callbacks(self, student, setup, steps):
        """`SampleConfigs` during the fit, `SubnetSearch` when it ends."""
        net = student.generator
        space = self.space(supernet.largest_config(net))
        macs = functools.partial(
            supernet.config_macs,
            input_shape=setup.budget.input_shape,
            family=ResnetFamily.of(net),
        )
        sampler = SampleConfigs(
            net,
            space,
            seed=setup.seed,
            start_step=self.predistill_steps(steps),
            max_macs=setup.budget.macs if self.options.sample_within_budget else None,
            macs=macs,
        )
        return [sampler, SubnetSearch(self, student, setup)]

    def budget_floors(self, max_macs: int) -> dict[str, float | None]:
        """`min_macs`/`min_latency_ms` of the search: `budget_floor` of the budget.

        The floor goes on the latency budget when there is one (the MACs
        budget then rarely binds), else on the MACs budget.
        """
        share = self.options.budget_floor
        if not share:
            return {"min_macs": None, "min_latency_ms": None}
        if self.options.max_latency_ms is not None:
            return {
                "min_macs": None,
                "min_latency_ms": share * self.options.max_latency_ms,
            }
        return {"min_macs": share * max_macs, "min_latency_ms": None}

    def latency_cache(self, net, input_shape, work_dir) -> tgc.search.LatencyCache:
        """The cache of measured sub-network latencies (`latency_cache` option)."""
        path = self.options.latency_cache
        if path is None and work_dir:
            path = os.path.join(work_dir, "latency.json")
        return tgc.search.LatencyCache.for_supernet(
            net, input_shape, path, runs=self.options.latency_runs
        )

    def search_supernet(
        self,
        net: keras.Model,
        inputs: np.ndarray,
        targets: np.ndarray,
        max_macs: int,
        input_shape,
        *,
        output: str | None = None,
        latency: tgc.search.LatencyCache | None = None,
        seed: int = 0,
        jit_compile: bool = True,
        verbose: bool = True,
        floors: dict | None = None,
    ) -> tgc.search.SearchResult:
        """Finds the best sub-network of a trained supernet within the budgets.

        Scores candidates by `SubnetScorer` (PSNR to `targets`) with the
        `search` option's algorithm; leaves the supernet at the best one.

        Args:
            net: The trained supernet.
            inputs: Validation inputs (training photos).
            targets: Their targets.
            max_macs: MACs budget at `input_shape`.
            input_shape: `(H, W, C)` at which MACs (and latency) count.
            output: Path prefix of the log (`.json`, `.png`); it also
                resumes an interrupted evolution.
            latency: A latency cache; needed with `max_latency_ms`.
            seed: Seed of the evolution.
            jit_compile: Compile the scoring forward pass with XLA.
            verbose: Show progress.
            floors: `min_macs`/`min_latency_ms` overriding `budget_floors`
                (e.g. a MACs pre-filter of a latency-budget search).

        Returns:
            The `tgc.search.SearchResult`.

        Raises:
            ValueError: If no configuration fits the budgets.
        """
        options = self.options
        space = self.space(supernet.largest_config(net))
        macs = functools.partial(
            supernet.config_macs,
            input_shape=tuple(input_shape),
            family=ResnetFamily.of(net),
        )
        score = SubnetScorer(net, inputs, targets, jit_compile=jit_compile)
        if options.max_latency_ms is not None and latency is None:
            latency = self.latency_cache(net, input_shape, None)
        budgets = {
            "macs": macs,
            "max_macs": max_macs,
            "latency": latency if options.max_latency_ms is not None else None,
            "max_latency_ms": options.max_latency_ms,
            "output": output,
            "progress": verbose,
        }
        floors = {**self.budget_floors(max_macs), **(floors or {})}
        if options.config is not None:
            result = tgc.search.brute_force([options.config], score, **budgets)
            if result.best is None:
                raise ValueError(
                    f"gan_compression config={options.config} is over the budget "
                    f"({max_macs:,} MACs, max_latency_ms={options.max_latency_ms})."
                )
        elif options.search == "brute_force":
            result = tgc.search.brute_force(space, score, **budgets, **floors)
        else:
            result = tgc.search.evolution(
                space,
                score,
                population=options.population,
                generations=options.generations,
                mutation_ratio=options.mutation_ratio,
                parent_ratio=options.parent_ratio,
                mutate_prob=options.mutate_prob,
                seed=seed,
                **budgets,
                **floors,
            )
        supernet.set_config(net, result.best.config)
        return result

    def choose(self, student, teacher, setup) -> tgc.search.SearchResult:
        """The search after the supernet's training (run by `SubnetSearch`).

        Saves the trained supernet to `<work_dir>/supernet.keras`, searches
        it (`search_supernet`, log `<work_dir>/search.*`), leaves it at the
        best configuration, and with `refit="teacher"` loads the teacher's
        L1-cut weights into it. The result is `student.state["search"]`.
        """
        net = student.generator
        output = None
        if setup.work_dir:
            os.makedirs(setup.work_dir, exist_ok=True)
            net.save(os.path.join(setup.work_dir, "supernet.keras"))
            output = os.path.join(setup.work_dir, "search")
        inputs, targets = setup.validation_arrays()
        latency = None
        if self.options.max_latency_ms is not None:
            latency = self.latency_cache(net, setup.budget.input_shape, setup.work_dir)
        result = self.search_supernet(
            net,
            inputs,
            targets,
            setup.budget.macs,
            setup.budget.input_shape,
            output=output,
            latency=latency,
            seed=setup.seed,
            jit_compile=setup.jit_compile,
        )
        if self.options.refit == "teacher":
            cut, _ = supernet.l1_cut(teacher, supernet.largest_config(net))
            net.set_weights(supernet.to_supernet(cut).get_weights())
            supernet.set_config(net, result.best.config)
        student.state["search"] = result
        return result

    def slim(self, student):
        """The supernet's current sub-network as a plain model.

        `kept` (for the least-squares refit) is the first channels of the
        supernet's teacher-channel map, unless `refit="none"`.
        """
        net = student.generator
        config = supernet.current_config(net)
        plain = supernet.extract(net, config, name=f"gan_compression_{config}")
        kept = None
        if self.options.refit != "none" and student.kept is not None:
            kept = {
                name: np.asarray(indices)[: plain.get_layer(name).filters]
                for name, indices in student.kept.items()
            }
        student.state["config"] = str(config)
        return dataclasses.replace(student, generator=plain, kept=kept)

    def finetune_trainer(self, student, teacher, setup, steps):
        return self._trainer(
            student,
            teacher,
            setup,
            base.adam(setup, steps),
            base.adam(setup, steps),
        )


class SubnetSearch(keras.callbacks.Callback):
    """At the end of the supernet's training: `GanCompression.choose`.

    Args:
        method: The method.
        student: Its student (the generator is the supernet being trained).
        setup: Budget, validation images, work dir.
    """

    def __init__(self, method: GanCompression, student: base.Student, setup):
        super().__init__()
        self.method = method
        self.student = student
        self.setup = setup

    def on_train_end(self, logs=None):
        self.method.choose(self.student, self.model.teacher, self.setup)


__all__ = [
    "GanCompression",
    "SampleConfigs",
    "SubnetScorer",
    "SubnetSearch",
    "config_space",
    "parse_choices",
    "scaled_config",
]
