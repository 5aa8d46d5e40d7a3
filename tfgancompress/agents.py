"""A pruning agent bound to the gates of one network: its units, masks and cost.

`GateAgent(network, input_shape, target_ratio)` puts a
`keras_layers.PruningAgent` in charge of the `ChannelGate`s of a gated
network (`tgc.pruning.add_gates` of a generator, a gated PatchGAN):

- **units**: the agent outputs one keep vector per unit. A unit is a tied
  residual group (`tgc.surgery.channel_groups`: `slim` keeps those channels
  together, so every member gate gets the same mask) or a single gate.
  A ResNet generator with 9 blocks has 14 units for its 23 gates;
- `masks(keeps)`: `{ChannelGate: mask}` for `keras_layers.driven_gates`,
  so that the network's losses reach the agent;
- `macs(keeps)` / `macs_ratio(keeps)`: the differentiable MACs of
  `tgc.cost.MacsEstimator`. A tied unit's keep goes to its first member
  gate and zeros to the others: the estimator's soft OR over a group,
  `1 - prod(1 - p)`, is then exactly the unit's keep `p`, and on 0/1 keeps
  the count equals `tgc.profile(tgc.slim(network))`;
- `resource_loss(keeps)`: `2 log(|MACs / MACs0 - p| + 1)`;
- `commit(max_macs=...)`: the agent's hard decisions written into the gates
  (`keras_layers.set_keeps`), every unit keeping at least its best channel;
  with a budget, one global threshold on the agent's logits is chosen
  instead, the lowest whose network fits `max_macs` (exact MACs,
  `tgc.cost.gate_macs`): the agent's ranking of the channels fills the
  budget from above or below. `tgc.slim` follows.

Example:

```python
gated = tgc.pruning.add_gates(teacher, "gumbel")
agent = tgc.agents.GateAgent(gated, (256, 256, 3), target_ratio=0.05)
with tf.GradientTape() as tape:
    keeps = agent.keeps(training=True)
    with keras_layers.driven_gates(agent.masks(keeps)):
        loss = task_loss(gated(x, training=True))
    loss += agent.resource_loss(keeps)
grads = tape.gradient(loss, agent.agent.trainable_variables)
agent.commit(max_macs=budget)
student = tgc.slim(gated)
```
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import keras_layers
from keras_layers.agents import PruningAgent, resource_loss
from tfgancompress import cost, surgery


def gate_units(model: keras.Model) -> list[tuple[str, ...]]:
    """The decision units of a gated model: tuples of gate names.

    A tied residual group (`tgc.surgery.channel_groups(model).tied`) is one
    unit, listed where its first gate is; every other gate is a unit of its
    own. Units come in graph order.

    Raises:
        ValueError: If the model has no gates, or tied gates do not tie
            their channels one to one in the same order (then one mask per
            unit would not describe them).

    Example:

    >>> g = tgc.models.resnet_generator(ngf=8, n_blocks=2, gated="gumbel")
    >>> tgc.agents.gate_units(g)[2]
    ('down2_gate', 'block1_gate2', 'block2_gate2')
    """
    groups = surgery.channel_groups(model)
    if not groups.ids:
        raise ValueError(f"Model {model.name!r} has no ChannelGate layers.")
    tied_of = {name: tied for tied in groups.tied for name in tied}
    units, seen = [], set()
    for name in groups.ids:
        unit = tied_of.get(name, (name,))
        if unit[0] in seen:
            continue
        seen.add(unit[0])
        first = groups.ids[unit[0]]
        for member in unit[1:]:
            if not np.array_equal(groups.ids[member], first):
                raise ValueError(
                    f"Gates {unit[0]!r} and {member!r} share channels but not one "
                    "to one in the same order; an agent cannot drive them with "
                    "one mask."
                )
        units.append(unit)
    return units


class GateAgent:
    """A `keras_layers.PruningAgent` that chooses the channels of one network.

    Args:
        network: A gated model as accepted by `tgc.slim`.
        input_shape: `(H, W, C)` at which MACs are counted.
        target_ratio: The MACs fraction `p` of the full network the
            resource term aims at, in (0, 1].
        state_dim: Size of the state the agent observes (0: none).
        **agent_kwargs: More `PruningAgent` arguments (`temperature`,
            `hidden_units`, `seed`, ...).

    Attributes:
        network: The gated network.
        agent: The `PruningAgent` (its trainable variables are the agent's).
        units: The units, tuples of gate names (`gate_units`).
        gates: `{gate name: ChannelGate}`.
        full_macs: MACs with every channel kept.
        target_ratio: `p`.
    """

    def __init__(
        self,
        network: keras.Model,
        input_shape,
        target_ratio: float,
        state_dim: int = 0,
        **agent_kwargs,
    ):
        if not 0.0 < target_ratio <= 1.0:
            raise ValueError(f"target_ratio must be in (0, 1], got {target_ratio}.")
        self.network = network
        self.input_shape = tuple(input_shape)
        self.target_ratio = float(target_ratio)
        self.units = gate_units(network)
        self.gates = surgery.gate_layers(network)
        self.estimator = cost.MacsEstimator(network, self.input_shape)
        self.full_macs = self.estimator.full_macs
        widths = [self.gates[unit[0]].channels for unit in self.units]
        agent_kwargs.setdefault("name", f"{network.name}_agent")
        self.agent = PruningAgent(widths, state_dim=state_dim, **agent_kwargs)

    @property
    def widths(self) -> list[int]:
        """Channels per unit."""
        return list(self.agent.widths)

    def keeps(self, state=None, training: bool = False) -> list:
        """The agent's keeps per unit (relaxed samples in training)."""
        return self.agent(state, training=training)

    def masks(self, keeps) -> dict:
        """`{ChannelGate: mask}`: each unit's keep for all its gates."""
        return {
            self.gates[name]: keep
            for unit, keep in zip(self.units, keeps, strict=True)
            for name in unit
        }

    def named_masks(self, keeps) -> dict[str, tf.Tensor]:
        """`{gate name: mask}`, as `masks` but keyed by gate name."""
        return {
            name: keep
            for unit, keep in zip(self.units, keeps, strict=True)
            for name in unit
        }

    def macs(self, keeps) -> tf.Tensor:
        """Differentiable MACs of the network with these keeps (float32)."""
        given = {}
        for unit, keep in zip(self.units, keeps, strict=True):
            given[unit[0]] = keep
            for name in unit[1:]:
                given[name] = tf.zeros_like(keep)
        return self.estimator(given)

    def macs_ratio(self, keeps) -> tf.Tensor:
        """`macs(keeps) / full_macs`."""
        return self.macs(keeps) / float(self.full_macs)

    def resource_loss(self, keeps) -> tf.Tensor:
        """`2 log(|macs_ratio(keeps) - target_ratio| + 1)`."""
        return resource_loss(self.macs_ratio(keeps), self.target_ratio)

    def unit_state(self, keeps) -> tf.Tensor:
        """`(units,)`: the mean keep of each unit, without gradient."""
        return tf.stop_gradient(tf.stack([tf.reduce_mean(k) for k in keeps]))

    def start_from(self, scores: dict, spread: float = 1.0) -> None:
        """Starts the agent from a ranking of each unit's channels.

        Each unit's head bias becomes its scores (by its first gate's name,
        e.g. `tgc.pruning.l1_importance(network)`) standardised within the
        unit, times `spread`: the agent still keeps every channel (the
        offset dominates), and when the resource term lowers a unit's
        logits, its lowest-scored channels go first, until training says
        otherwise.

        Args:
            scores: `{gate name: (C,) scores}` covering each unit's first gate.
            spread: Standard deviation of the biases within a unit.

        Raises:
            ValueError: If a unit's scores are missing or of the wrong shape.
        """
        for unit, head in zip(self.units, self.agent.heads, strict=True):
            score = np.asarray(scores.get(unit[0], ()), np.float64)
            if score.shape != (head.units,):
                raise ValueError(
                    f"start_from needs ({head.units},) scores for gate {unit[0]!r}, "
                    f"got shape {score.shape}."
                )
            centred = score - score.mean()
            scale = centred.std()
            bias = spread * centred / scale if scale > 0 else np.zeros_like(centred)
            head.bias.assign(bias.astype(np.float32))

    def hard_macs(self) -> int:
        """Exact MACs of `tgc.slim(network)` at the gates' current decisions."""
        return cost.gate_macs(self.network, self.input_shape)

    def _write(self, logits: list, threshold: float) -> None:
        keeps = []
        for logit in logits:
            keep = logit > threshold
            keep[np.argmax(logit)] = True
            keeps.append(keep.astype(np.float32))
        keras_layers.set_keeps(self.masks(keeps))

    def commit(self, state=None, max_macs: int | None = None) -> int:
        """Writes the agent's hard decisions into the gates; returns the MACs.

        Without a budget a channel is kept where `logit + offset > 0` (the
        agent's evaluation decision). With `max_macs`, a channel is kept
        where its logit is above one global threshold, the lowest at which
        the network costs at most `max_macs` (bisection over the logits):
        the agent's ranking fills the budget. Either way every unit keeps
        at least its highest-logit channel.

        Args:
            state: The state the agent decides on.
            max_macs: Optional MACs budget at `input_shape`.

        Returns:
            The exact MACs of `tgc.slim(network)` afterwards.

        Raises:
            ValueError: If even one channel per unit costs more than
                `max_macs`.
        """
        logits = [
            np.asarray(keras.ops.convert_to_numpy(logit)) + self.agent.offset
            for logit in self.agent.logits(state)
        ]
        if max_macs is None:
            self._write(logits, 0.0)
            return self.hard_macs()
        self._write(logits, np.inf)
        smallest = self.hard_macs()
        if smallest > max_macs:
            raise ValueError(
                f"{self.network.name!r} costs {smallest} MACs with one channel per "
                f"unit, over the budget of {max_macs}."
            )
        # Keep `logit > values[i]`; values[-1] (one channel per unit) fits.
        values = np.concatenate([[-np.inf], np.unique(np.concatenate(logits))])
        low, high = 0, len(values) - 1
        while low < high:
            middle = (low + high) // 2
            self._write(logits, values[middle])
            if self.hard_macs() <= max_macs:
                high = middle
            else:
                low = middle + 1
        self._write(logits, values[high])
        return self.hard_macs()
