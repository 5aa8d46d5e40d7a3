"""Datasets: image folders and built-in real photo tasks, as `tf.data`.

Folders (pix2pix/CycleGAN layout; load -> crop -> flip; every file checked
first, bad files named and skipped or, with `strict=True`, an error):

* `paired_dataset(folder_or_pair)`: "AB" side-by-side images, or two aligned
  folders matched by file name -> `(input, target)` batches.
* `unpaired_dataset(dir_a, dir_b)`: independently shuffled domains.

Built-in, offline: 400 colour photos from 12 sources (scikit-image,
scikit-learn, matplotlib sample photos; Debian's opencv-doc and eight Debian
packages the set-up unpacks, GCompris's among them; see `builtin`). Hold
evaluation photos out by source with `split_by_source`; `count_by_source`
tells how many photos each source gave a split:

* `builtin_photos()`: the photos that are there, as `Photo` records;
  `load_photo`/`open_photo` read one upright in RGB.
* `photos(split)`: random zoom crops of the colour photos.
* `vintage_pairs(split)`: (view of a photo, the pretrained vintage
  teacher's output on exactly that view), computed once and cached on disk;
  `pseudo_pairs` for any teacher.
* `edges2photos(split)`: (HED edge drawing, photo), cached.
* `dead_leaves_photos(count)`: synthetic dead-leaves images drawn from a
  seed (`synthetic`), written once as PNGs: extra training photos.

All images are `float32` NHWC in [-1, 1].

```python
import tfgancompress as tgc

train = tgc.data.vintage_pairs("train", crop_size=128, batch_size=4, seed=0)
held_out = tgc.data.vintage_pairs("eval", crop_size=256)
train_photos, held_out_photos = tgc.data.split_by_source(tgc.data.builtin_photos())
print(len(train_photos), tgc.data.count_by_source(train_photos))
```
"""

from tfgancompress.data.builtin import (
    DEBIAN_SOURCES,
    DEFAULT_HOLDOUT,
    DEFAULT_PHOTO_SET,
    EXTRA_SOURCES,
    OPENCV_DOC_DIR,
    PHOTO_SETS,
    SOURCES,
    Photo,
    builtin_photos,
    count_by_source,
    default_photo_dir,
    load_photo,
    open_photo,
    photo_set,
    photos,
    split_by_source,
)
from tfgancompress.data.duplicates import near_duplicates, perceptual_hash
from tfgancompress.data.folders import (
    IMAGE_EXTENSIONS,
    BadImageError,
    FolderScan,
    ImageInfo,
    paired_dataset,
    scan_images,
    unpaired_dataset,
)
from tfgancompress.data.pairs import (
    default_cache_dir,
    edges2photos,
    pseudo_pairs,
    vintage_pairs,
)
from tfgancompress.data.synthetic import dead_leaves_image, dead_leaves_photos

__all__ = [
    "DEBIAN_SOURCES",
    "DEFAULT_HOLDOUT",
    "DEFAULT_PHOTO_SET",
    "EXTRA_SOURCES",
    "IMAGE_EXTENSIONS",
    "OPENCV_DOC_DIR",
    "PHOTO_SETS",
    "SOURCES",
    "BadImageError",
    "FolderScan",
    "ImageInfo",
    "Photo",
    "builtin_photos",
    "count_by_source",
    "dead_leaves_image",
    "dead_leaves_photos",
    "default_cache_dir",
    "default_photo_dir",
    "edges2photos",
    "load_photo",
    "near_duplicates",
    "open_photo",
    "paired_dataset",
    "perceptual_hash",
    "photo_set",
    "photos",
    "pseudo_pairs",
    "scan_images",
    "split_by_source",
    "unpaired_dataset",
    "vintage_pairs",
]
