"""`local_density`: local density structure + collaborative G/D pruning agents.

Ganjdanesh et al., "Compressing Image-to-Image Translation GANs Using Local
Density Structures on Their Learned Manifold" (AAAI 2024). The paper
publishes no code; this module is this project's reading of it, and says
so wherever the paper leaves a choice open.

Phases (`training.pipeline` runs them):

1. **build**: the teacher with a gate after every norm
   (`tgc.pruning.add_gates`), a gated PatchGAN discriminator, and two
   pruning agents (`tgc.agents.GateAgent`): `genG` chooses the generator's
   channels, `genD` the discriminator's. Each agent is a small
   hyper-network (per-unit embeddings -> bidirectional GRU -> per-unit
   linear heads -> gumbel-sigmoid keeps, hard straight-through at
   evaluation, `keras_layers.PruningAgent`), started from the teacher's
   filter-L1 ranking (`GateAgent.start_from`) and keeping every channel;
2. **prune** (`LocalDensityTrainer` with the agents as `OptimizerGroup`s):
   every step, each agent outputs its network's keeps, which drive the
   gates (`gate_masks` / `drive_gates`: differentiable tensors, not
   assigned variables); G and D train under them, and the agents train on
   the step's losses differentiated through both networks. At the end the
   agents' decisions are written into the gates, each agent's logit
   ranking filling its budget exactly (`GateAgent.commit`);
3. `slim` of the generator **and** the discriminator;
4. the pipeline's least-squares refit to the teacher;
5. **fine-tune** the slimmed G and D with the task losses and the local
   density terms (the same trainer, without agents).

**The agents' objectives** (this project's reading of "each agent uses its
peer's feedback"):

- genG: `L_G + lambda_peer * L_D + lambda_resource * R_G`;
- genD: `L_D + lambda_peer * L_G + lambda_resource * R_D`;

with `L_G`/`L_D` the generator's/discriminator's loss of the step, both
differentiated with respect to the agent's keeps through everything the
step computed (D's loss reaches genG through the student's fakes: unlike
the base trainer, D's loss here does not stop the fakes' gradient; D's own
update only differentiates D's variables, so it is unchanged), and
`R = 2 log(|MACs(keeps) / MACs_0 - p| + 1)` on the differentiable MACs of
`tgc.cost.MacsEstimator` (`p`: the generator's MACs budget over the
teacher's; `d_macs_ratio` for D). The peer's loss pulls each agent away
from an architecture that wins its own game by overpowering the other: for
LSGAN, genD's own term asks D to score fakes 0 and its peer term asks for
1, genG the reverse, so both agents favour networks that keep the game
balanced. Each agent also *observes* its peer: its state input is the
peer's gate state (each unit's mean keep) and the `asinh` of the peer's
loss, both from the previous step. `peer=False` (the
`local_density_no_peer` ablation) drops both: no peer state, no peer loss.

**Local density terms** (generator, both phases; `tgc.density`): each
training input is the centre of a neighbourhood whose `neighbours` members
are the nearest earlier training pairs by their teacher outputs
(`tgc.density.NeighbourBank`, no extra teacher forward), plus `augmented`
members: the teacher's outputs on colour-jittered copies of the input
(`tgc.density.augment`, one teacher forward each; none by default). The
student also runs on the neighbours' inputs. Then

- `density`: the KDE structure term, kernel similarities between centre
  and neighbours, teacher vs student, Gaussian kernel with a bandwidth per
  neighbourhood (`tgc.density.kde_structure_loss`);
- `local_gan`: adversarial matching within neighbourhoods: a small
  neighbourhood-conditioned PatchGAN sees `concat(teacher centre, sample)`
  and tells the teacher's neighbours (real) from the student's (fake). It
  trains in an `OptimizerGroup` (`local_d`) after the generator's update.

The generator's other terms are `distill`'s: GAN loss against the main
discriminator, L1 to the target and feature distillation at four taps.
"""

from __future__ import annotations

import dataclasses
import types

import keras
import tensorflow as tf

import tfgancompress as tgc
from tfgancompress import density
from tfgancompress.agents import GateAgent
from training.callbacks import gates_of
from training.methods import base, register
from training.trainer import AdversarialTrainer, OptimizerGroup, Step


def _total(terms: dict) -> tf.Tensor:
    return tf.add_n([tf.cast(value, tf.float32) for value in terms.values()])


def _without_gates(variables: list, network: keras.Model, agent) -> list:
    """`variables` without the gates' own parameters while an agent drives them."""
    if agent is None:
        return variables
    driven = {id(v) for gate in gates_of(network) for v in gate.weights}
    return [v for v in variables if id(v) not in driven]


def local_discriminator(channels: int, ndf: int) -> keras.Model:
    """The neighbourhood-conditioned PatchGAN: input `concat(centre, sample)`."""
    return tgc.models.patchgan_discriminator(
        ndf=ndf,
        n_layers=2,
        input_channels=channels,
        conditional=True,
        name="local_discriminator",
    )


class LocalDensityTrainer(AdversarialTrainer):
    """`AdversarialTrainer` + local density terms + optional G/D pruning agents.

    Args:
        generator: The student (gated while agents prune it).
        discriminator: The discriminator (gated while agents prune it).
        teacher: The teacher generator (required: neighbourhoods live on
            its outputs).
        mode: `"paired"` or `"unpaired"`.
        g_agent: `GateAgent` of the generator, or `None` (no pruning).
        d_agent: `GateAgent` of the discriminator, or `None`.
        peer: Whether each agent observes its peer's gate state and loss
            (its agent needs `state_dim = peer units + 1`).
        local_discriminator: The neighbourhood-conditioned discriminator,
            or `None` without the `local_gan` term.
        neighbours: Nearest neighbours per centre (from the bank).
        augmented: Augmented neighbours per centre (teacher outputs on
            colour-jittered copies of the input).
        augment_strength: Strength of that jitter (`tgc.density.augment`).
        bank_capacity: Training pairs the neighbour bank keeps.
        bank_grid: Pooled side of the teacher outputs the bank compares.
        kde_grid: Pooled side of the features of the KDE term.
        lambda_density: Weight of the KDE term (0: off).
        lambda_local_gan: Weight of the local adversarial term (0: off).
        **kwargs: More `AdversarialTrainer` arguments.
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        teacher: keras.Model,
        mode: str = "paired",
        *,
        g_agent: GateAgent | None = None,
        d_agent: GateAgent | None = None,
        peer: bool = True,
        local_discriminator: keras.Model | None = None,
        neighbours: int = 2,
        augmented: int = 0,
        augment_strength: float = 0.1,
        bank_capacity: int = 64,
        bank_grid: int = 8,
        kde_grid: int = 8,
        lambda_density: float = 1.0,
        lambda_local_gan: float = 0.1,
        **kwargs,
    ):
        if teacher is None:
            raise ValueError("LocalDensityTrainer needs the teacher generator.")
        if (g_agent is None) != (d_agent is None):
            raise ValueError("Give both pruning agents (genG and genD) or neither.")
        if lambda_local_gan and local_discriminator is None:
            raise ValueError("lambda_local_gan > 0 needs a local_discriminator.")
        super().__init__(generator, discriminator, teacher=teacher, mode=mode, **kwargs)
        self.g_agent, self.d_agent, self.peer = g_agent, d_agent, bool(peer)
        self.local_discriminator = local_discriminator if lambda_local_gan else None
        self.kde_grid = int(kde_grid)
        self.augmented = int(augmented)
        self.augment_strength = float(augment_strength)
        self.lambda_density = float(lambda_density)
        self.lambda_local_gan = float(lambda_local_gan)
        # Built on the first batch (it needs the crop size); its buffer is
        # not checkpointed: a resumed run refills it.
        self._holder = types.SimpleNamespace(
            bank=density.NeighbourBank(neighbours, bank_capacity, bank_grid)
        )
        if g_agent is not None:
            # Attributes, so that Keras saves the agents with the trainer.
            self.genG, self.genD = g_agent.agent, d_agent.agent
            if peer:
                self.g_feedback = keras.Variable(
                    tf.zeros(len(g_agent.units) + 1), trainable=False, name="g_seen"
                )
                self.d_feedback = keras.Variable(
                    tf.zeros(len(d_agent.units) + 1), trainable=False, name="d_seen"
                )

    @property
    def bank(self) -> density.NeighbourBank:
        """The `NeighbourBank` of recent `(input, teacher output)` pairs."""
        return self._holder.bank

    @property
    def neighbour_count(self) -> int:
        """Members of each neighbourhood besides its centre."""
        return self.bank.neighbours + self.augmented

    # Agents ----------------------------------------------------------------

    def agent_states(self) -> tuple:
        """`(genG's state, genD's state)`: each sees its peer (or `None`s)."""
        if self.g_agent is None or not self.peer:
            return None, None
        return tf.identity(self.d_feedback), tf.identity(self.g_feedback)

    def gate_masks(self, step: Step) -> dict:
        if self.g_agent is None:
            return {}
        g_state, d_state = self.agent_states()
        g_keeps = self.g_agent.keeps(g_state, training=True)
        d_keeps = self.d_agent.keeps(d_state, training=True)
        step.extras["g_keeps"], step.extras["d_keeps"] = g_keeps, d_keeps
        return {**self.g_agent.masks(g_keeps), **self.d_agent.masks(d_keeps)}

    def after_step(self, step: Step) -> None:
        if self.g_agent is None or not self.peer:
            return
        for variable, agent, keeps, terms in (
            (self.g_feedback, self.g_agent, step.extras["g_keeps"], step.g_terms),
            (self.d_feedback, self.d_agent, step.extras["d_keeps"], step.d_terms),
        ):
            loss = tf.math.asinh(tf.stop_gradient(_total(terms)))
            variable.assign(tf.concat([agent.unit_state(keeps), [loss]], 0))

    def generator_variables(self) -> list:
        return _without_gates(
            super().generator_variables(), self.generator, self.g_agent
        )

    def discriminator_variables(self) -> list:
        return _without_gates(
            super().discriminator_variables(), self.discriminator, self.d_agent
        )

    # Neighbourhoods and losses ---------------------------------------------

    def prepare_step(self, x, y) -> Step:
        step = super().prepare_step(x, y)
        inputs, outputs = self.bank(x, step.teacher_image)
        if self.augmented:
            seeds = tf.random.experimental.stateless_split(step.seed, self.augmented)
            jittered = [
                density.augment(x, seeds[i], self.augment_strength)
                for i in range(self.augmented)
            ]
            teacher = [
                tf.stop_gradient(self.teacher(j, training=False)) for j in jittered
            ]
            inputs = tf.concat([inputs, tf.stack(jittered, axis=1)], axis=1)
            outputs = tf.concat([outputs, tf.stack(teacher, axis=1)], axis=1)
        step.extras["neighbour_inputs"] = inputs
        step.extras["neighbour_teacher"] = outputs
        return step

    def generator_loss_names(self) -> list[str]:
        names = super().generator_loss_names()
        if self.lambda_density:
            names.append("density")
        if self.local_discriminator is not None:
            names.append("local_gan")
        return names

    def _neighbourhood_pairs(self, step: Step, samples) -> tf.Tensor:
        """`concat(teacher centre, sample)` per neighbour: `(B * k, H, W, 2C)`."""
        centres = tf.repeat(step.teacher_image, self.neighbour_count, axis=0)
        return tf.concat([centres, samples], axis=-1)

    def _features(self, images, neighbours: int | None = None) -> tf.Tensor:
        """KDE features `(N, D)`, or `(N / k, k, D)` for `k` neighbours each."""
        found = density.output_features(images, self.kde_grid)
        if neighbours is None:
            return found
        return tf.reshape(found, (-1, neighbours, found.shape[-1]))

    def generator_losses(self, step: Step) -> dict:
        terms = super().generator_losses(step)
        if not (self.lambda_density or self.local_discriminator is not None):
            return terms
        inputs = step.extras["neighbour_inputs"]
        teacher = step.extras["neighbour_teacher"]
        k = self.neighbour_count
        flat = tf.reshape(inputs, (-1, *inputs.shape[2:]))
        student = self.generator(flat, training=True)
        step.extras["neighbour_student"] = student
        if self.lambda_density:
            flat_teacher = tf.reshape(teacher, (-1, *teacher.shape[2:]))
            terms["density"] = self.lambda_density * density.kde_structure_loss(
                self._features(step.teacher_image),
                self._features(flat_teacher, k),
                self._features(step.fake),
                self._features(student, k),
            )
        if self.local_discriminator is not None:
            logits = self.local_discriminator(
                self._neighbourhood_pairs(step, student), training=True
            )
            terms["local_gan"] = self.lambda_local_gan * self.gan_loss.generator(logits)
        return terms

    def discriminator_losses(self, step: Step) -> dict:
        # As the base trainer, but the fakes keep their gradient so that
        # genG's peer term (D's loss) reaches the generator's gates; D's own
        # update differentiates D's variables only.
        real = self.discriminator_input(step.x, step.real)
        fake = step.fake
        if self.g_agent is None or not self.peer:
            fake = tf.stop_gradient(fake)
        fake = self.discriminator_input(step.x, fake)
        return {
            "d_gan": self.gan_loss.discriminator(
                self.discriminator(real, training=True),
                self.discriminator(fake, training=True),
            )
        }

    def local_discriminator_losses(self, step: Step) -> dict:
        """The local discriminator's loss: teacher vs student neighbours."""
        teacher = step.extras["neighbour_teacher"]
        teacher = tf.reshape(teacher, (-1, *teacher.shape[2:]))
        student = tf.stop_gradient(step.extras["neighbour_student"])
        return {
            "local_d": self.gan_loss.discriminator(
                self.local_discriminator(
                    self._neighbourhood_pairs(step, teacher), training=True
                ),
                self.local_discriminator(
                    self._neighbourhood_pairs(step, student), training=True
                ),
            )
        }


# The optimizer groups --------------------------------------------------------


def agent_groups(
    trainer: LocalDensityTrainer,
    optimizers: tuple,
    lambda_peer: float = 1.0,
    lambda_resource: float = 1.0,
) -> list[OptimizerGroup]:
    """genG and genD as `OptimizerGroup`s (module docstring for their losses).

    Args:
        trainer: The trainer holding the agents.
        optimizers: `(genG's, genD's)` optimizers.
        lambda_peer: Weight of the peer network's loss (0: none).
        lambda_resource: Weight of the resource term.
    """
    peer = lambda_peer if trainer.peer else 0.0

    def objective(prefix, agent, keeps_key, own_key, peer_key):
        def losses(step: Step) -> dict:
            terms = {
                f"{prefix}_own": _total(getattr(step, own_key)),
                f"{prefix}_resource": lambda_resource
                * agent.resource_loss(step.extras[keeps_key]),
            }
            if peer:
                terms[f"{prefix}_peer"] = peer * _total(getattr(step, peer_key))
            return terms

        return losses

    groups = []
    for (prefix, agent, keeps, own, other), optimizer in zip(
        (
            ("genG", trainer.g_agent, "g_keeps", "g_terms", "d_terms"),
            ("genD", trainer.d_agent, "d_keeps", "d_terms", "g_terms"),
        ),
        optimizers,
        strict=True,
    ):
        names = [f"{prefix}_own", f"{prefix}_resource"]
        if peer:
            names.append(f"{prefix}_peer")
        groups.append(
            OptimizerGroup(
                prefix,
                optimizer,
                variables=lambda agent=agent: agent.agent.trainable_variables,
                losses=objective(prefix, agent, keeps, own, other),
                loss_names=names,
            )
        )
    return groups


def local_discriminator_group(
    trainer: LocalDensityTrainer, optimizer
) -> OptimizerGroup:
    """The local discriminator's `OptimizerGroup` (after the generator's update)."""
    return OptimizerGroup(
        "local_d",
        optimizer,
        variables=lambda: trainer.local_discriminator.trainable_variables,
        losses=trainer.local_discriminator_losses,
        loss_names=["local_d"],
    )


class CommitAgents(keras.callbacks.Callback):
    """At the end of the pruning phase, writes the agents' choices into the gates.

    Each agent's logit ranking fills its budget exactly
    (`GateAgent.commit(max_macs=...)`): afterwards `tgc.slim` of the
    generator costs at most `g_macs`, of the discriminator at most `d_macs`.
    """

    def __init__(self, g_macs: int, d_macs: int):
        super().__init__()
        self.g_macs, self.d_macs = int(g_macs), int(d_macs)
        self.committed: dict[str, int] = {}

    def on_train_end(self, logs=None):
        trainer = self.model
        g_state, d_state = trainer.agent_states()
        self.committed = {
            "g_macs": trainer.g_agent.commit(g_state, max_macs=self.g_macs),
            "d_macs": trainer.d_agent.commit(d_state, max_macs=self.d_macs),
        }


# The method ------------------------------------------------------------------


@register
class LocalDensity(base.Method):
    """Local density terms + collaborative G/D pruning agents (module docstring)."""

    name = "local_density"

    @dataclasses.dataclass(frozen=True)
    class Options:
        """The method's knobs (module docstring for what they weigh).

        Attributes:
            search_share: Share of the steps in the pruning phase.
            peer: Agents observe and weigh their peer (False: the
                `local_density_no_peer` ablation).
            lambda_peer: Weight of the peer network's loss in each agent's.
            lambda_resource: Weight of the agents' resource terms.
            d_macs_ratio: The discriminator's MACs target, as a fraction
                of its full MACs (the paper prunes D to keep it balanced
                with the pruned G; this fraction is this project's choice).
            agent_learning_rate: Adam learning rate of the agents.
            temperature: Gumbel-sigmoid temperature of the agents.
            neighbours: Nearest earlier training pairs per neighbourhood.
            augmented: Augmented neighbours per centre (one teacher
                forward each).
            augment_strength: Colour jitter of the augmented neighbours.
            bank_capacity: Recent training pairs searched for neighbours.
            bank_grid: Pooled side of the teacher outputs the bank compares.
            kde_grid: Pooled side of the KDE term's features (must divide
                the crop size).
            lambda_density: Weight of the KDE structure term.
            lambda_local_gan: Weight of the neighbourhood adversarial term.
            local_ndf: Width of the neighbourhood-conditioned discriminator.
            lambda_recon: L1 to the target; `None`: 100 paired, 10 unpaired.
            lambda_distill: Feature distillation; `None`: 1 paired, 0.01
                unpaired.
            lambda_gan: The adversarial term against the main discriminator.
        """

        search_share: float = 0.3
        peer: bool = True
        lambda_peer: float = 1.0
        lambda_resource: float = 1.0
        d_macs_ratio: float = 0.25
        agent_learning_rate: float = 1e-2
        temperature: float = 0.4
        neighbours: int = 2
        augmented: int = 0
        augment_strength: float = 0.1
        bank_capacity: int = 64
        bank_grid: int = 8
        kde_grid: int = 8
        lambda_density: float = 10.0
        lambda_local_gan: float = 0.1
        local_ndf: int = 16
        lambda_recon: float | None = None
        lambda_distill: float | None = None
        lambda_gan: float = 1.0

        def __post_init__(self):
            base.check_non_negative(self, "local_density")
            if not 0.0 < self.search_share < 1.0:
                raise ValueError(
                    f"local_density search_share must be in (0, 1), got "
                    f"{self.search_share}."
                )
            if not 0.0 < self.d_macs_ratio <= 1.0:
                raise ValueError(
                    f"local_density d_macs_ratio must be in (0, 1], got "
                    f"{self.d_macs_ratio}."
                )
            if self.neighbours < 1 or self.bank_capacity <= self.neighbours:
                raise ValueError(
                    "local_density needs neighbours >= 1 and bank_capacity > "
                    f"neighbours, got {self.neighbours} and {self.bank_capacity}."
                )
            if self.temperature <= 0 or self.local_ndf < 1:
                raise ValueError(
                    f"local_density needs temperature > 0 and local_ndf >= 1, got "
                    f"{self.temperature} and {self.local_ndf}."
                )

    def split_steps(self, steps: int) -> dict[str, int]:
        search = round(self.options.search_share * steps)
        return {"search": search, "finetune": steps - search}

    def build(self, teacher, setup):
        shape = setup.budget.input_shape
        generator = tgc.pruning.add_gates(teacher, "binary")
        channels = teacher.output_shape[-1]
        discriminator = base.discriminator(setup, channels, gated=True)
        d_shape = (*shape[:2], discriminator.input_shape[-1])
        options = self.options
        kwargs = {"temperature": options.temperature, "seed": setup.seed}
        g_units = len(tgc.agents.gate_units(generator))
        d_units = len(tgc.agents.gate_units(discriminator))
        g_agent = GateAgent(
            generator,
            shape,
            setup.budget.macs / tgc.profile(teacher, shape).macs,
            state_dim=d_units + 1 if options.peer else 0,
            **kwargs,
        )
        d_agent = GateAgent(
            discriminator,
            d_shape,
            options.d_macs_ratio,
            state_dim=g_units + 1 if options.peer else 0,
            **kwargs,
        )
        g_agent.start_from(tgc.pruning.l1_importance(generator))
        d_agent.start_from(tgc.pruning.l1_importance(discriminator))
        return base.Student(
            generator,
            discriminator,
            state={
                "g_agent": g_agent,
                "d_agent": d_agent,
                "local_discriminator": local_discriminator(channels, options.local_ndf),
            },
        )

    def _trainer(self, student, teacher, setup, steps, agents: bool):
        options = self.options
        state = student.state
        if "local_discriminator" not in state:  # resumed after the search
            state["local_discriminator"] = local_discriminator(
                teacher.output_shape[-1], options.local_ndf
            )
        trainer = LocalDensityTrainer(
            student.generator,
            student.discriminator,
            teacher,
            setup.mode,
            g_agent=state["g_agent"] if agents else None,
            d_agent=state["d_agent"] if agents else None,
            peer=options.peer,
            local_discriminator=state["local_discriminator"],
            neighbours=options.neighbours,
            augmented=options.augmented,
            augment_strength=options.augment_strength,
            bank_capacity=options.bank_capacity,
            bank_grid=options.bank_grid,
            kde_grid=options.kde_grid,
            lambda_density=options.lambda_density,
            lambda_local_gan=options.lambda_local_gan,
        )
        groups = []
        if agents:
            optimizers = tuple(
                keras.optimizers.Adam(options.agent_learning_rate) for _ in range(2)
            )
            groups += agent_groups(
                trainer, optimizers, options.lambda_peer, options.lambda_resource
            )
        if trainer.local_discriminator is not None:
            groups.append(local_discriminator_group(trainer, base.adam(setup, steps)))
        trainer.compile(
            g_optimizer=base.adam(setup, steps),
            d_optimizer=base.adam(setup, steps),
            gan_loss="lsgan",
            lambda_gan=options.lambda_gan,
            lambda_recon=options.lambda_recon,
            lambda_distill=options.lambda_distill,
            jit_compile=setup.jit_compile,
            groups=groups,
        )
        return trainer

    def search_trainer(self, student, teacher, setup, steps):
        return self._trainer(student, teacher, setup, steps, agents=True)

    def search_callbacks(self, student, setup, steps):
        d_agent = student.state["d_agent"]
        return [
            CommitAgents(
                setup.budget.macs, int(self.options.d_macs_ratio * d_agent.full_macs)
            )
        ]

    def finetune_trainer(self, student, teacher, setup, steps):
        return self._trainer(student, teacher, setup, steps, agents=False)


@register
class LocalDensityNoPeer(LocalDensity):
    """The ablation: agents that neither observe nor weigh their peer."""

    name = "local_density_no_peer"

    @dataclasses.dataclass(frozen=True)
    class Options(LocalDensity.Options):
        """`local_density`'s options with `peer` off."""

        peer: bool = False
