"""Input pipelines on mock tfds data and the embedded digits."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfnorms import data


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("cifar100", (32, 32, 3)),
                                        ("svhn", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_pipelines_on_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=20):
        train = data.load(name, "train", batch_size=8, seed=1)
        test = data.load(name, "test", batch_size=8)
        train_batches = list(train)
        test_batches = list(test)
    assert len(train_batches) == 2  # 20 examples, drop_remainder for training
    assert [int(b[0].shape[0]) for b in test_batches] == [8, 8, 4]
    for images, labels in train_batches + test_batches:
        assert images.shape[1:] == shape and images.dtype == tf.float32
        assert labels.dtype == tf.int32
        assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0
    assert train.element_spec[0].shape[0] == 8  # static batch size for compiled steps


def test_augmentation_pads_crops_and_flips():
    image = tf.reshape(tf.range(1, 4 * 4 + 1, dtype=tf.float32), (4, 4, 1)) / 16.0
    seen_shift = seen_flip = False
    for seed in range(40):
        tf.random.set_seed(seed)
        out = data.augment(image, pad=1, flip=True).numpy()[..., 0]
        assert out.shape == (4, 4)
        values = set(np.round(out.ravel() * 16).astype(int)) - {0}
        assert values <= set(range(1, 17))  # only original pixels or zero padding
        seen_shift |= bool((out == 0).any())
        seen_flip |= bool(out[0, 0] > out[0, -1] > 0)
    assert seen_shift and seen_flip
    no_flip = [data.augment(image, pad=0, flip=False).numpy() for _ in range(5)]
    for out in no_flip:
        np.testing.assert_array_equal(out, image.numpy())


def test_digits_embedded_data_set():
    (x_train, y_train), (x_test, y_test) = data.digits_arrays(image_size=16)
    assert x_train.shape[1:] == (16, 16, 1) and len(x_train) + len(x_test) == 1797
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(np.unique(y_train)) == set(range(10))
    assert not set(map(bytes, x_test[:50])) & set(map(bytes, x_train))  # disjoint split
    batch = next(iter(data.load("digits", "test", batch_size=16, image_size=12)))
    assert batch[0].shape == (16, 12, 12, 1)


def test_missing_tfds_data_fails_fast_with_guidance(tmp_path):
    with pytest.raises(RuntimeError, match="data_dir.*digits"):
        data.load("cifar10", "train", data_dir=str(tmp_path), download=False)


@pytest.mark.parametrize(
    "call,match",
    [(lambda: data.load("imagenet"), "`name`.*cifar10"),
     (lambda: data.load("digits", batch_size=0), "`batch_size`"),
     (lambda: data.load("cifar10", image_size=8), "image_size")],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
