"""tgc.pruning: gates into a trained network, filter-L1 selection."""

import numpy as np
import pytest
from gate_patterns import (
    assert_equivalent,
    assert_plain,
    gate_list,
    images,
    randomize_gates,
    randomize_norms,
)

import keras_layers
import tfgancompress as tgc
from tfgancompress.pruning import l1_importance
from tfgancompress.surgery import slim


def test_l1_importance_shared_by_residual_group():
    model = tgc.models.resnet_generator(ngf=4, n_blocks=2, gated="binary")
    importance = l1_importance(model)
    stem = np.abs(model.get_layer("stem_conv").kernel.numpy()).sum((0, 1, 2))
    np.testing.assert_allclose(importance["stem_gate"], stem, rtol=1e-6)
    stream = sum(
        np.abs(model.get_layer(name).kernel.numpy()).sum((0, 1, 2))
        for name in ("down2_conv", "block1_conv2", "block2_conv2")
    )
    for gate in ("down2_gate", "block1_gate2", "block2_gate2"):
        np.testing.assert_allclose(importance[gate], stream, rtol=1e-6)
    up1 = np.abs(model.get_layer("up1_conv").kernel.numpy()).sum((0, 1, 3))
    np.testing.assert_allclose(importance["up1_gate"], up1, rtol=1e-6)


@pytest.mark.parametrize("mode", ["binary", "scale"])
def test_add_gates_copies_weights_and_prunes(mode):
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=2, affine=True)
    randomize_norms(teacher)
    gated = tgc.pruning.add_gates(teacher, mode)
    gates = gate_list(gated)
    norms = [
        layer
        for layer in teacher.layers
        if isinstance(layer, keras_layers.InstanceNormalization)
    ]
    assert sorted(g.name for g in gates) == sorted(f"{n.name}_gate" for n in norms)
    x = images((1, 32, 32, 3))
    assert_equivalent(teacher, gated, x)
    randomize_gates(gated, keep=0.5, shift=False)
    assert_equivalent(gated, slim(gated), x)


def test_l1_prune_keeps_top_filters():
    teacher = tgc.models.resnet_generator(ngf=8, n_blocks=2, affine=True)
    pruned = tgc.pruning.l1_prune(teacher, 0.5)
    assert_plain(pruned)
    assert pruned.get_layer("stem_conv").filters == 4
    assert pruned.get_layer("block1_conv1").filters == 16
    stem = np.abs(teacher.get_layer("stem_conv").kernel.numpy()).sum((0, 1, 2))
    kept = np.sort(np.argsort(stem)[-4:])
    np.testing.assert_allclose(
        pruned.get_layer("stem_conv").kernel.numpy(),
        teacher.get_layer("stem_conv").kernel.numpy()[..., kept],
    )
    with pytest.raises(ValueError, match="keep_ratio"):
        tgc.pruning.l1_prune(teacher, 0.0)
