"""tfgancompress: compress image-to-image GAN generators and ship them as LiteRT.

```python
import tfgancompress as tgc

teacher = tgc.models.pretrained("vintage")
print(tgc.profile(teacher, (256, 256, 3)))
```
"""

from tfgancompress import console  # first: it acts before TensorFlow loads

# isort: split
from tfgancompress import (
    agents,
    cost,
    data,
    density,
    export,
    latency,
    lowering,
    masks,
    metrics,
    models,
    proximal,
    pruning,
    quantization,
    reconstruction,
    schedules,
    search,
    ship,
    surgery,
)
from tfgancompress.profile import LayerProfile, ModelProfile, profile
from tfgancompress.surgery import live_channels, slim

__all__ = [
    "LayerProfile",
    "ModelProfile",
    "agents",
    "console",
    "cost",
    "data",
    "density",
    "export",
    "latency",
    "live_channels",
    "lowering",
    "masks",
    "metrics",
    "models",
    "profile",
    "proximal",
    "pruning",
    "quantization",
    "reconstruction",
    "schedules",
    "search",
    "ship",
    "slim",
    "surgery",
]
