"""Training for tfgancompress: trainers, losses, callbacks and scripts."""

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
