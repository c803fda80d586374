"""tfnorms.norms.geometry: TensorFlow's padding arithmetic."""

from tfnorms.norms import geometry


def test_tf_same_padding_is_asymmetric():
    assert geometry.axis_padding(6, 3, 2, 1, "same") == (0, 1, 3)
    assert geometry.axis_padding(32, 3, 2, 1, "same") == (0, 1, 16)
    assert geometry.axis_padding(7, 3, 2, 1, "same") == (1, 1, 4)
