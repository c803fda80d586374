"""tfnorms.norms.projections: the l1-ball projection and the operator-norm projections, against brute force."""

import numpy as np
import pytest

import norm_bruteforce as bf
from tfnorms import norms


def bisection_projection(y, c):
    """Projection onto the l1 ball by bisection on the soft threshold (independent of Duchi's sort)."""
    if np.abs(y).sum() <= c:
        return y
    lo, hi = 0.0, np.abs(y).max()
    for _ in range(200):
        theta = (lo + hi) / 2
        lo, hi = (theta, hi) if np.maximum(np.abs(y) - theta, 0).sum() > c else (lo, theta)
    return np.sign(y) * np.maximum(np.abs(y) - hi, 0)


def test_l1_ball_projection_test_vector_and_bisection():
    np.testing.assert_allclose(
        norms.project_l1_ball(np.array([0.5, -1.5, 2.0, 0.1]), 2.0).numpy(), [0.0, -0.75, 1.25, 0.0], atol=1e-12
    )
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(20, 13)) * rng.uniform(0.1, 3, size=(20, 1))
    projected = norms.project_l1_ball(batch, 4.0).numpy()
    for row, got in zip(batch, projected):
        np.testing.assert_allclose(got, bisection_projection(row, 4.0), atol=1e-9)
    assert np.all(np.abs(projected).sum(axis=1) <= 4.0 + 1e-9)
    np.testing.assert_array_equal(norms.project_l1_ball(batch, 0.0).numpy(), 0.0)


@pytest.mark.parametrize(
    "ord, strides, padding, hw",
    [(1, 1, "same", (6, 6)), (1, 2, "same", (6, 6)), (np.inf, 2, "valid", (7, 5)), (1, 1, "same", (2, 2)),
     (np.inf, 1, "same", (2, 3))],
)
def test_project_operator_norm_bounds_brute_force_norm(ord, strides, padding, hw):
    kernel = np.random.default_rng(4).normal(size=(3, 3, 3, 4))
    norm = bf.l1 if ord == 1 else bf.linf
    before = norm(bf.conv_matrix(kernel, hw, strides, padding))
    bound = 0.5 * before
    geom = dict(input_shape=hw, strides=strides, padding=padding)
    projected = norms.project_operator_norm(kernel, bound, ord, **geom).numpy()
    assert norm(bf.conv_matrix(projected, hw, strides, padding)) <= bound * (1 + 1e-9)
    assert np.all(np.abs(projected) <= np.abs(kernel) + 1e-12) and np.all(projected * kernel >= 0)
    # Paper mode: the maximal group lands exactly on the bound.
    _, mask = bf.conv_max_group_mask(kernel, ord, hw, strides, padding)
    single = norms.project_max_group(kernel, bound, ord, **geom).numpy()
    assert np.abs(single * mask).sum() == pytest.approx(bound)
    np.testing.assert_array_equal(single * (1 - mask), kernel * (1 - mask))


def test_project_operator_norm_is_nearest_point_for_disjoint_groups():
    kernel = np.random.default_rng(5).normal(size=(3, 3, 2, 3))
    projected = norms.project_operator_norm(kernel, 3.0, np.inf).numpy()
    for j in range(3):  # each output filter is projected on its own
        np.testing.assert_allclose(projected[..., j].ravel(), bisection_projection(kernel[..., j].ravel(), 3.0), atol=1e-9)
