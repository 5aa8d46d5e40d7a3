"""tfgancompress: compress image-to-image GAN generators and ship them as LiteRT.

```python
import tfgancompress as tgc
```
"""

from tfgancompress import models
from tfgancompress.surgery import slim
