"""Channel selection by reconstruction error, and widths under a MACs budget."""

import keras
import numpy as np
import pytest

import tfgancompress as tgc
from tfgancompress import models, pruning, reconstruction, surgery
from training import budget, methods
from training.methods import base

SHAPE = (32, 32, 3)


def _images(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE)).astype(np.float32)


def _teacher_ignoring_big_stem_filters():
    """A ResNet whose down1 hardly reads stem channels 4-7, while they have
    the largest filters (the stem's instance norm undoes their scale): L1
    keeps the useless half, the teacher needs the other."""
    teacher = models.resnet_generator(ngf=8, n_blocks=1)
    stem = teacher.get_layer("stem_conv")
    kernel, bias = stem.get_weights()
    kernel[..., 4:] *= 10.0
    stem.set_weights([kernel, bias])
    down = teacher.get_layer("down1_conv")
    kernel, bias = down.get_weights()
    kernel[:, :, 4:, :] *= 1e-3
    down.set_weights([kernel, bias])
    return teacher


def test_greedy_selection_keeps_the_channels_the_consumer_reads():
    teacher = _teacher_ignoring_big_stem_filters()
    gated = pruning.add_gates(teacher, "binary")
    paths = pruning.greedy_paths(gated, teacher, _images(8, 0), verbose=False)
    stem = next(p for p in paths if p.name == "stem_norm_gate")
    assert stem.consumers == ("down1_conv",)
    assert sorted(stem.order[:4].tolist()) == [0, 1, 2, 3]
    assert stem.errors[0] == pytest.approx(1.0)
    assert stem.errors[4] < 1e-2 < stem.errors[3]  # down1 reads those 4
    assert np.all(np.diff(stem.errors) <= 1e-9)  # adding channels never hurts
    l1_kept = surgery.kept_channels(pruning.l1_gated(teacher, 0.5))["stem_conv"]
    assert l1_kept.tolist() == [4, 5, 6, 7]


def test_selected_stem_refits_better_than_the_l1_stem():
    teacher = _teacher_ignoring_big_stem_filters()
    x, held_out = _images(8, 1), _images(4, 2)
    wanted = teacher.predict(held_out, verbose=0)
    gated = pruning.add_gates(teacher, "binary")
    paths = pruning.greedy_paths(gated, teacher, x, max_keep=1.0, verbose=False)
    widths = {**pruning.uniform_widths(paths, 1.0), "stem_norm_gate": 4}

    def refitted_psnr(gated):
        student = tgc.slim(gated)
        kept = surgery.kept_channels(gated)
        reconstruction.reconstruct(student, teacher, x, kept, verbose=False)
        return np.mean(tgc.metrics.psnr(wanted, student.predict(held_out, verbose=0)))

    pruning.apply_paths(gated, paths, widths)
    greedy = refitted_psnr(gated)
    by_l1 = pruning.add_gates(teacher, "binary")
    importance = pruning.l1_importance(by_l1)["stem_norm_gate"]
    tgc.schedules.apply_sparsity(by_l1.get_layer("stem_norm_gate"), 0.5, importance)
    l1 = refitted_psnr(by_l1)
    assert greedy > l1 + 10.0, (greedy, l1)


def test_residual_group_is_one_path_and_macs_match_the_slimmed_model():
    teacher = models.resnet_generator(ngf=8, n_blocks=2)
    gated = pruning.add_gates(teacher, "binary")
    paths = pruning.greedy_paths(
        gated, teacher, _images(4, 3), max_keep=0.75, verbose=False
    )
    stream = next(p for p in paths if "down2_norm_gate" in p.gates)
    assert set(stream.gates) == {
        "down2_norm_gate",
        "block1_norm2_gate",
        "block2_norm2_gate",
    }
    assert set(stream.consumers) == {"block1_conv1", "block2_conv1", "up1_conv"}
    assert len(paths) == 7  # stem, down1, stream, 2 block interiors, up1, up2
    assert len(stream.order) == 24 and len(stream.errors) == 25
    widths = {p.name: w for p, w in zip(paths, [3, 5, 17, 2, 9, 11, 4], strict=True)}
    pruning.apply_paths(gated, paths, widths)
    masks = [gated.get_layer(g).keep_mask() for g in stream.gates]
    for mask in masks:
        np.testing.assert_array_equal(mask, masks[0])
    assert masks[0].sum() == 17
    np.testing.assert_array_equal(np.flatnonzero(masks[0]), np.sort(stream.order[:17]))
    slimmed = tgc.profile(tgc.slim(gated), (64, 64, 3)).macs
    assert pruning.paths_macs(gated, widths, (64, 64, 3)) == slimmed
    assert tgc.cost.gate_macs(gated, (64, 64, 3)) == slimmed


def test_allocated_widths_fit_the_budget_and_spend_it_where_errors_fall():
    teacher = _teacher_ignoring_big_stem_filters()
    gated = pruning.add_gates(teacher, "binary")
    paths = pruning.greedy_paths(
        gated, teacher, _images(8, 4), max_keep=1.0, verbose=False
    )
    full = tgc.profile(teacher, SHAPE).macs
    widths = pruning.allocate_widths(gated, paths, 0.3 * full, SHAPE)
    assert pruning.paths_macs(gated, widths, SHAPE) <= 0.3 * full
    # The stem's channels beyond the 4 that down1 reads add no error, so
    # they are the first to go; the 4 it reads are worth their MACs.
    assert widths["stem_norm_gate"] == 4
    pruning.apply_paths(gated, paths, widths)
    assert tgc.profile(tgc.slim(gated), SHAPE).macs <= 0.3 * full


def test_selection_errors_name_the_problem():
    teacher = models.resnet_generator(ngf=8, n_blocks=1)
    x = _images(2, 5)
    with pytest.raises(ValueError, match="has no gates"):
        pruning.greedy_paths(teacher, teacher, x)
    gated = pruning.add_gates(teacher, "binary")
    with pytest.raises(ValueError, match=r"max_keep must be in \(0, 1\]"):
        pruning.greedy_paths(gated, teacher, x, max_keep=0.0)
    paths = pruning.greedy_paths(gated, teacher, x, max_keep=0.5, verbose=False)
    widths = pruning.uniform_widths(paths, 0.5)
    with pytest.raises(ValueError, match="'stem_norm_gate' needs a width in"):
        pruning.apply_paths(gated, paths, {**widths, "stem_norm_gate": 5})
    with pytest.raises(ValueError, match="out of reach"):
        pruning.allocate_widths(gated, paths, 10, SHAPE)


def test_mobile_consumers_are_refused():
    teacher = models.mobile_resnet_generator(ngf=8, n_blocks=1)
    gated = pruning.add_gates(teacher, "binary")
    with pytest.raises(ValueError, match="supports Conv2D and Conv2DTranspose"):
        pruning.greedy_paths(gated, teacher, _images(2, 6))


def test_layer_equations_solve_to_the_layer():
    inputs = keras.Input((16, 16, 4))
    layer = keras.layers.Conv2D(5, 3, padding="same", name="conv")
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(7).normal(size=(4, 16, 16, 4)).astype(np.float32)
    equations = reconstruction.layer_equations(
        model, ["conv"], x, samples_per_layer=600, dtype=np.float64
    )["conv"]
    assert equations.count == 600
    weights, error = equations.solve(ridge=1e-9)
    assert error < 1e-9
    np.testing.assert_allclose(
        weights[:-1].reshape(layer.kernel.shape), layer.kernel.numpy(), atol=1e-4
    )
    with pytest.raises(ValueError, match="not an ungrouped Conv2D"):
        reconstruction.layer_equations(model, [inputs._keras_history.operation.name], x)


def test_distill_keeps_the_greedy_channels_when_given_calibration_images():
    teacher = _teacher_ignoring_big_stem_filters()
    half = tgc.profile(pruning.l1_prune(teacher, 0.5), SHAPE).macs
    target = budget.Budget(half, SHAPE)
    images = _images(8, 7)
    distill = methods.get("distill")

    def stem_kept(setup, method=distill):
        student = method.slim(method.build(teacher, setup))
        return student, student.kept["stem_conv"].tolist()

    greedy, kept = stem_kept(base.Setup(target, calibration=lambda: images))
    assert greedy.state["selection"] == "greedy"
    assert kept == [0, 1, 2, 3]  # the channels down1 reads
    l1, kept = stem_kept(base.Setup(target))
    assert l1.state["selection"] == "l1"
    assert kept == [4, 5, 6, 7]  # the largest filters
    # Same widths either way, so the same MACs, within the budget.
    macs = [tgc.profile(s.generator, SHAPE).macs for s in (greedy, l1)]
    assert macs[0] == macs[1] <= target.macs
    forced = methods.get("distill", "selection=l1")
    assert stem_kept(base.Setup(target, calibration=images), forced)[1] == kept
    with pytest.raises(ValueError, match="needs calibration images"):
        methods.get("distill", "selection=greedy").build(teacher, base.Setup(target))
    with pytest.raises(ValueError, match=r"Setup.calibration must be .*\(8, 32, 32\)"):
        distill.build(teacher, base.Setup(target, calibration=images[..., 0]))
