"""Input pipelines: tensorflow-datasets image sets and an embedded offline data set.

Every pipeline yields ``(images, labels)`` batches with float32 images in
[0, 1] (NHWC) and int32 labels, the convention of all models and attacks here.
Training pipelines shuffle, augment (4-pixel zero pad + random crop, and a
random horizontal flip where it makes sense), batch with ``drop_remainder`` (so
compiled and distributed steps see one static batch size) and prefetch.

* ``"cifar10"``, ``"cifar100"``, ``"svhn"`` (tfds ``svhn_cropped``), ``"mnist"``:
  through tensorflow-datasets (``pip install tfnorms[datasets]``); pass
  ``data_dir`` for data downloaded beforehand.
* ``"digits"``: the 8x8 handwritten digits that ship inside scikit-learn,
  upsampled (default 16x16) and split into train/test. Real learning with no
  network, for quick starts and CPU-sized studies.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from tfnorms import _args


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a supported data set."""

    name: str
    tfds_name: Optional[str]
    num_classes: int
    image_shape: Tuple[int, int, int]
    flip: bool
    train_split: str = "train"
    test_split: str = "test"


DATASETS = {
    "cifar10": DatasetInfo("cifar10", "cifar10", 10, (32, 32, 3), flip=True),
    "cifar100": DatasetInfo("cifar100", "cifar100", 100, (32, 32, 3), flip=True),
    "svhn": DatasetInfo("svhn", "svhn_cropped", 10, (32, 32, 3), flip=False),
    "mnist": DatasetInfo("mnist", "mnist", 10, (28, 28, 1), flip=False),
    "digits": DatasetInfo("digits", None, 10, (16, 16, 1), flip=False),
}


def dataset_info(name: str, image_size: Optional[int] = None) -> DatasetInfo:
    """Returns the :class:`DatasetInfo` of ``name`` (``image_size`` resizes ``"digits"``)."""
    _args.choice(name, "name", sorted(DATASETS))
    info = DATASETS[name]
    if image_size is not None:
        if name != "digits":
            raise ValueError("`image_size` only applies to the embedded 'digits' data set.")
        info = dataclasses.replace(info, image_shape=(image_size, image_size, info.image_shape[2]))
    return info


def augment(image, *, pad: int = 4, flip: bool = True, seed=None):
    """Zero-pads one ``(H, W, C)`` image by ``pad`` pixels, random-crops it back, optionally flips it."""
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    cropped = tf.image.random_crop(padded, tf.shape(image), seed=seed)
    return tf.image.random_flip_left_right(cropped, seed=seed) if flip else cropped


def make_pipeline(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    training: bool,
    flip: bool,
    shuffle_buffer: int = 10_000,
    drop_remainder: Optional[bool] = None,
    seed: Optional[int] = None,
) -> tf.data.Dataset:
    """Turns a dataset of ``(uint8 or float image, label)`` pairs into batches.

    Images are scaled to float32 [0, 1] (uint8 / 255). ``training=True``
    shuffles, augments and (by default) drops the last partial batch.
    """
    _args.positive_int(batch_size, "batch_size")
    if drop_remainder is None:
        drop_remainder = training

    def to_float(image, label):
        if image.dtype == tf.uint8:
            image = tf.cast(image, tf.float32) / 255.0
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(
            lambda x, y: (augment(x, flip=flip, seed=seed), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def digits_arrays(image_size: int = 16, test_fraction: float = 0.2, seed: int = 0):
    """The scikit-learn 8x8 digits, upsampled to ``image_size`` and split.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` with float32 images in [0, 1]
        of shape ``(N, image_size, image_size, 1)`` and int32 labels. The split
        is stratified-free but seeded and fixed (1797 images in total).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The embedded 'digits' data set ships inside scikit-learn: pip install scikit-learn "
            "(or tfnorms[datasets])."
        ) from error
    _args.number(test_fraction, "test_fraction", low=0, high=1, low_open=True, high_open=True)
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]
    images = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy().clip(0.0, 1.0)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


def load(
    name: str,
    split: str = "train",
    *,
    batch_size: int = 128,
    data_dir: Optional[str] = None,
    training: Optional[bool] = None,
    image_size: Optional[int] = None,
    drop_remainder: Optional[bool] = None,
    seed: Optional[int] = None,
    download: bool = True,
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline of ``(images in [0, 1], int labels)``.

    Args:
        name: one of ``"cifar10"``, ``"cifar100"``, ``"svhn"``, ``"mnist"``,
            ``"digits"`` (embedded, offline).
        split: ``"train"`` or ``"test"`` (any tfds split string for tfds sets).
        batch_size: batch size.
        data_dir: tensorflow-datasets directory holding pre-downloaded data.
        training: shuffle + augment + drop remainder; defaults to
            ``split == "train"``.
        image_size: side of the upsampled ``"digits"`` images (default 16).
        drop_remainder: override the default (``training``).
        seed: shuffle/augmentation seed.
        download: let tensorflow-datasets download missing data.

    Returns:
        A ``tf.data.Dataset``.

    Raises:
        RuntimeError: the tfds data set is neither in ``data_dir`` nor
            downloadable; the message names ``data_dir`` and the embedded set.

    Example:
        >>> train = load("digits", "train", batch_size=32)
        >>> images, labels = next(iter(train))
        >>> images.shape, float(images.numpy().max()) <= 1.0
        (TensorShape([32, 16, 16, 1]), True)
    """
    info = dataset_info(name, image_size)
    if training is None:
        training = split.startswith("train")
    if name == "digits":
        (x_train, y_train), (x_test, y_test) = digits_arrays(info.image_shape[0], seed=0)
        _args.choice(split, "split", ("train", "test"))
        arrays = (x_train, y_train) if split == "train" else (x_test, y_test)
        source = tf.data.Dataset.from_tensor_slices(arrays)
    else:
        source = _tfds_source(info, split, data_dir, download)
    return make_pipeline(
        source, batch_size=batch_size, training=training, flip=info.flip,
        drop_remainder=drop_remainder, seed=seed,
    )


def _tfds_source(info: DatasetInfo, split: str, data_dir, download: bool) -> tf.data.Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            f"Loading {info.name!r} needs tensorflow-datasets: pip install tfnorms[datasets]. "
            "The embedded data set 'digits' needs only scikit-learn."
        ) from error
    try:
        return tfds.load(
            info.tfds_name, split=split, data_dir=data_dir, as_supervised=True, download=download
        )
    except Exception as error:  # tfds raises many types for missing data / no network
        raise RuntimeError(
            f"Could not load {info.name!r} through tensorflow-datasets "
            f"({type(error).__name__}: {error}). Download it on a machine with network "
            f"access (tfds.load({info.tfds_name!r}, data_dir=...)) and pass that directory "
            "as `data_dir` (--data_dir in the examples), or use the embedded offline data "
            "set 'digits' (--dataset=digits)."
        ) from error
