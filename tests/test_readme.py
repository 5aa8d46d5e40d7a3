"""The README's API tour runs as written and its numbers hold."""

import functools
import pathlib
import re
import types

import keras
import numpy as np
import tensorflow as tf

import keras_layers
import tfgancompress as tgc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks(section: str) -> list[str]:
    """The python code blocks of the README section titled `section`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    parts = re.split(r"^## ", readme, flags=re.MULTILINE)
    (text,) = [part for part in parts if part.startswith(section + "\n")]
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_api_tour_runs(tmp_path, monkeypatch, capsys):
    blocks = _python_blocks("API tour")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}  # shared: later blocks may build on earlier ones
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = [float(line) for line in capsys.readouterr().out.split()]
    assert round(printed[0], 1) == 56.8
    assert round(printed[1], 2) == 3.78
    assert namespace["y"].shape == (1, 256, 256, 3)


def test_write_your_own_method_example_runs_through_the_pipeline(tmp_path):
    """The example method registers and compresses a tiny teacher to 1/20."""
    definition, usage = _python_blocks("Write your own method")
    namespace = {"__name__": "readme_example"}
    exec(compile(definition, "README.md", "exec"), namespace)
    methods = namespace["methods"]
    try:
        assert "gradual_l1" in methods.available()
        keras.utils.set_random_seed(0)
        teacher = tgc.models.resnet_generator(ngf=16, n_blocks=1, affine=True)
        views = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3))
        views = views.astype("float32")
        pairs = tf.data.Dataset.from_tensor_slices((views, teacher(views)))
        # The usage block runs in a copy: the method's code keeps the real
        # `methods` module, the usage sees the shim below.
        namespace = dict(
            namespace,
            teacher=teacher,
            pairs=pairs.batch(2, drop_remainder=True).repeat(),
            views=views,
            steps=4,
            # The same methods, trained without XLA: compiling two train
            # steps would double the test's time (XLA is tested elsewhere).
            methods=types.SimpleNamespace(
                get=methods.get,
                Setup=functools.partial(methods.Setup, jit_compile=False),
            ),
        )
        exec(compile(usage, "README.md", "exec"), namespace)
    finally:
        methods.unregister("gradual_l1")
    result, student = namespace["result"], namespace["student"]
    assert namespace["method"].options.lambda_distill == 2.0
    assert result.steps == {"search": 2, "finetune": 2}
    assert len(result.histories["search"]["g_loss"]) == 1
    assert result.refit_images == 8
    assert not [
        layer.name
        for layer in student._flatten_layers(include_self=False)
        if isinstance(layer, keras_layers.ChannelGate)
    ]
    teacher_macs = tgc.profile(teacher, (256, 256, 3)).macs
    assert tgc.profile(student, (256, 256, 3)).macs == result.macs
    assert teacher_macs / result.macs >= 20


def test_gcc_model_fit_example(monkeypatch, capsys):
    """The GCC section's two fits prune to 1/20 and slim the discriminator."""
    from training.trainer import AdversarialTrainer

    compile_with_xla = AdversarialTrainer.compile

    def compile_without_xla(self, *args, **kwargs):
        # Two XLA programs would triple the test (XLA is tested elsewhere).
        return compile_with_xla(self, *args, **{**kwargs, "jit_compile": False})

    monkeypatch.setattr(AdversarialTrainer, "compile", compile_without_xla)
    title = "GCC: cooperative compression with a selective-activation discriminator"
    (example,) = _python_blocks(title)
    keras.utils.set_random_seed(0)
    teacher = tgc.models.resnet_generator(ngf=16, n_blocks=1, affine=True)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    pairs = tf.data.Dataset.from_tensor_slices((x, np.tanh(2 * x[..., ::-1])))
    namespace = {
        "teacher": teacher,
        "pairs": pairs.batch(2, drop_remainder=True).repeat(),
        "steps": 2,
    }
    exec(compile(example, "README.md", "exec"), namespace)
    assert capsys.readouterr().out.splitlines()[-1].startswith("True {")
    student, target = namespace["student"], namespace["target"]
    assert tgc.profile(student.generator, target.input_shape).macs <= target.macs
    assert tgc.profile(teacher, target.input_shape).macs >= 20 * target.macs
    history = namespace["history"].history
    assert {"content", "gram", "gate_coordination", "teacher_d_gan"} <= set(history)
    assert not [
        layer
        for layer in student.discriminator._flatten_layers(include_self=False)
        if isinstance(layer, keras_layers.ChannelGate)
    ]
    assert student.state["d_macs"] <= student.state["d_macs_before"]
