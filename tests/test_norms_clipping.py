"""tfnorms.norms.clipping: singular value clipping of convolutions, against the complex reference and brute force."""

import numpy as np
import pytest

import norm_bruteforce as bf
from tfnorms import norms


@pytest.mark.parametrize("hw, groups", [((5, 6), 1), ((8, 8), 2), ((4, 7), 1)])
def test_svc_real_formulation_equals_complex_reference(hw, groups):
    kernel = np.random.default_rng(6).normal(size=(3, 3, 4 // groups, 6)).astype("float32")
    reference = norms.conv2d_clip_singular_values_reference(kernel, 1.0, input_shape=hw, groups=groups).numpy()
    for method in ("gram", "svd", "hermitian"):
        ours = norms.conv2d_clip_singular_values(kernel, 1.0, input_shape=hw, groups=groups, method=method)
        np.testing.assert_allclose(ours.numpy(), reference, atol=2e-5)
    # Without the crop (kernel as large as the input) one pass is exact: sigma_max == clip_to.
    full = np.random.default_rng(7).normal(size=(4, 4, 3, 5))
    clipped = norms.conv2d_clip_singular_values(full, 1.0, input_shape=(4, 4)).numpy()
    assert bf.l2(bf.circular_matrix(clipped, (4, 4))) == pytest.approx(1.0, rel=1e-6)
