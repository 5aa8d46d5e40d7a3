"""Pruning agents: small hyper-networks whose outputs are channel gates.

A `PruningAgent` chooses the channels of a network (one *unit* per group of
channels that are kept or removed together, e.g. one per gated layer):

    per-unit embeddings (+ a projected state vector)
      -> bidirectional GRU over the units
      -> layer norm -> one linear head per unit: a logit per channel
      -> gumbel-sigmoid gates (temperature ~0.4)

The GRU lets each unit's decision depend on the others' (the hyper-network
design of Gao et al., CVPR 2021, that Ganjdanesh et al., AAAI 2024 use for
their generator and discriminator agents). In training the gates are
relaxed samples; at evaluation they are the hard decisions
`1[logit + offset > 0]`, with a straight-through gradient, so a loss of
the hard architecture still reaches the agent.

The optional *state* input is what the agent observes besides its own
parameters, e.g. its peer network's gate state and loss (the collaborative
agents of `training.methods.local_density`); a zero state is no
information.

`resource_loss` is the agents' budget penalty, `2 log(|r - p| + 1)` for a
cost ratio `r` and a target `p`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


def gumbel_sigmoid(
    logits,
    temperature: float = 0.4,
    seed=None,
    hard: bool = False,
):
    """A relaxed Bernoulli sample `sigmoid((logits + logistic noise) / T)`.

    Args:
        logits: Float tensor of keep logits.
        temperature: `T` > 0; smaller is closer to 0/1.
        seed: A `keras.random.SeedGenerator` or int for the noise.
        hard: Forward the 0/1 sample (`> 0.5`) with the relaxed sample's
            gradient (straight-through).

    Returns:
        A tensor like `logits`, values in [0, 1].

    Example:

    >>> keep = gumbel_sigmoid(keras.ops.full((8,), 10.0), 0.4, seed=0)
    >>> bool(keras.ops.all(keep > 0.99))
    True
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    logits = ops.convert_to_tensor(logits, "float32")
    uniform = keras.random.uniform(
        ops.shape(logits), minval=1e-6, maxval=1.0 - 1e-6, seed=seed
    )
    noise = ops.log(uniform) - ops.log(1.0 - uniform)
    soft = ops.sigmoid((logits + noise) / temperature)
    if not hard:
        return soft
    return soft + ops.stop_gradient(ops.cast(soft > 0.5, "float32") - soft)


def resource_loss(ratio, target: float):
    """The agents' budget penalty `2 log(|ratio - target| + 1)`.

    Args:
        ratio: Cost of the chosen architecture over the full network's
            (e.g. `tgc.cost.MacsEstimator(...)(keeps) / full_macs`).
        target: The ratio `p` to reach, in (0, 1].

    Returns:
        A float32 scalar, 0 at `ratio == target`.

    Example:

    >>> float(resource_loss(0.05, 0.05))
    0.0
    """
    ratio = ops.cast(ratio, "float32")
    return 2.0 * ops.log(ops.abs(ratio - target) + 1.0)


@keras.saving.register_keras_serializable(package="tfgancompress")
class PruningAgent(keras.layers.Layer):
    """A hyper-network that outputs per-channel keep gates for a few units.

    Args:
        widths: Channels of each unit, in the order the GRU reads them
            (e.g. the network's gated layers from input to output).
        state_dim: Size of the state vector the agent observes (0: none).
        embedding_dim: Size of the learned per-unit embeddings.
        hidden_units: GRU units per direction.
        temperature: Gumbel-sigmoid temperature in training.
        offset: Added to every logit, so that a fresh agent keeps nearly
            every channel (`sigmoid(3 / 0.4)` ~ 0.9994).
        straight_through: In training, forward hard 0/1 samples with the
            relaxed samples' gradient (the network sees the architecture it
            will be slimmed to).
        seed: Seed of the embeddings' initialisation and of the noise.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        state: `(state_dim,)` or `(1, state_dim)` float tensor, or `None`
            (zeros) when `state_dim` is 0 or nothing is observed.
        training: Relaxed samples (`True`) or hard decisions (`False`).

    Returns:
        A list with one `(widths[i],)` float tensor of keeps per unit.

    Example:

    >>> agent = PruningAgent([16, 32, 16], state_dim=2)
    >>> keeps = agent(keras.ops.zeros((2,)), training=True)
    >>> [tuple(k.shape) for k in keeps]
    [(16,), (32,), (16,)]
    """

    def __init__(
        self,
        widths: Sequence[int],
        state_dim: int = 0,
        embedding_dim: int = 64,
        hidden_units: int = 64,
        temperature: float = 0.4,
        offset: float = 3.0,
        straight_through: bool = False,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(
                f"widths must be a non-empty list of channel counts >= 1, got {widths}."
            )
        if state_dim < 0 or embedding_dim < 1 or hidden_units < 1:
            raise ValueError(
                f"Need state_dim >= 0, embedding_dim >= 1 and hidden_units >= 1, "
                f"got {state_dim}, {embedding_dim}, {hidden_units}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.widths = widths
        self.state_dim = int(state_dim)
        self.embedding_dim = int(embedding_dim)
        self.hidden_units = int(hidden_units)
        self.temperature = float(temperature)
        self.offset = float(offset)
        self.straight_through = bool(straight_through)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.state_projection = (
            keras.layers.Dense(embedding_dim, name="state_projection")
            if state_dim
            else None
        )
        self.gru = keras.layers.Bidirectional(
            keras.layers.GRU(hidden_units, return_sequences=True), name="gru"
        )
        self.norm = keras.layers.LayerNormalization(name="norm")
        # Logits of standard deviation ~0.6 (PyTorch's Linear default), far
        # below the offset: a fresh agent keeps every channel.
        head_init = keras.initializers.VarianceScaling(
            1.0 / 3.0, "fan_in", "uniform", seed=seed
        )
        self.heads = [
            keras.layers.Dense(w, kernel_initializer=head_init, name=f"head{i}")
            for i, w in enumerate(widths)
        ]
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        units = len(self.widths)
        self.embeddings = self.add_weight(
            shape=(units, self.embedding_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=self.seed),
            name="embeddings",
        )
        if self.state_projection is not None:
            self.state_projection.build((1, self.state_dim))
        self.gru.build((1, units, self.embedding_dim))
        self.norm.build((1, units, 2 * self.hidden_units))
        for head in self.heads:
            head.build((1, 2 * self.hidden_units))
        self.built = True

    def _state(self, state):
        if self.state_projection is None:
            if state is not None and (state.shape[-1] or 0) > 0:
                raise ValueError(
                    f"This agent observes no state (state_dim=0); got a state of "
                    f"shape {tuple(state.shape)}."
                )
            return 0.0
        if state is None:
            state = ops.zeros((1, self.state_dim))
        state = ops.reshape(ops.cast(state, "float32"), (1, -1))
        if state.shape[-1] is not None and state.shape[-1] != self.state_dim:
            raise ValueError(
                f"The agent's state must have {self.state_dim} values, got shape "
                f"{tuple(state.shape)}."
            )
        return ops.expand_dims(self.state_projection(state), 1)

    def logits(self, state=None) -> list:
        """The per-unit keep logits (before the offset), `(widths[i],)` each."""
        sequence = ops.expand_dims(self.embeddings, 0) + self._state(state)
        hidden = self.norm(self.gru(sequence))[0]
        return [
            ops.reshape(head(hidden[i : i + 1]), (-1,))
            for i, head in enumerate(self.heads)
        ]

    def probabilities(self, state=None) -> list:
        """Deterministic keeps `sigmoid((logit + offset) / T)` per unit."""
        return [
            ops.sigmoid((logit + self.offset) / self.temperature)
            for logit in self.logits(state)
        ]

    def call(self, state=None, training=False):
        keeps = []
        for logit in self.logits(state):
            shifted = logit + self.offset
            if training:
                keep = gumbel_sigmoid(
                    shifted,
                    self.temperature,
                    seed=self.seed_generator,
                    hard=self.straight_through,
                )
            else:
                soft = ops.sigmoid(shifted / self.temperature)
                hard = ops.cast(shifted > 0.0, "float32")
                keep = soft + ops.stop_gradient(hard - soft)
            keeps.append(keep)
        return keeps

    def compute_output_shape(self, input_shape=None):
        return [(w,) for w in self.widths]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "widths": list(self.widths),
                "state_dim": self.state_dim,
                "embedding_dim": self.embedding_dim,
                "hidden_units": self.hidden_units,
                "temperature": self.temperature,
                "offset": self.offset,
                "straight_through": self.straight_through,
                "seed": self.seed,
            }
        )
        return config
