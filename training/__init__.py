"""Training for tfgancompress: trainers, losses, callbacks and scripts."""

# First: in a command-line tool, the console filter starts before TensorFlow.
from tfgancompress import console  # noqa: F401
from training import losses
from training.image_pool import ImagePool
from training.trainer import (
    AdversarialTrainer,
    CycleGANTrainer,
    OptimizerGroup,
    Step,
)

__all__ = [
    "AdversarialTrainer",
    "CycleGANTrainer",
    "ImagePool",
    "OptimizerGroup",
    "Step",
    "losses",
]
