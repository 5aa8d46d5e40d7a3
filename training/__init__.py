"""Training for tfgancompress: trainers, losses, callbacks and scripts."""
