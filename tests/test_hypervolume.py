"""The hypervolume against a count of unit cells on integer points (independent of the code)."""

import itertools

import numpy as np
import pytest

from autocompress.hypervolume import hypervolume


def _cells(points: np.ndarray, reference: tuple[int, ...]) -> int:
    """Unit cells of the box [0, reference) dominated by some point: brute force."""
    count = 0
    for cell in itertools.product(*(range(r) for r in reference)):
        if any(all(p[i] <= cell[i] for i in range(len(cell))) for p in points):
            count += 1
    return count


@pytest.mark.parametrize("dims", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_counts_each_dominated_cell_once(dims, seed):
    rng = np.random.default_rng(seed)
    reference = (6,) * dims
    points = rng.integers(0, 6, size=(int(rng.integers(1, 8)), dims))
    assert hypervolume(points, reference) == pytest.approx(_cells(points, reference))


def test_points_outside_the_reference_add_nothing():
    assert hypervolume([[1.0, 1.0], [4.0, 0.5]], [3.0, 3.0]) == pytest.approx(4.0)
    assert hypervolume([[3.0, 1.0]], [3.0, 3.0]) == 0.0  # on the boundary: no volume
    assert hypervolume(np.empty((0, 2)), [3.0, 3.0]) == 0.0


def test_a_dominated_point_changes_nothing():
    front = [[1.0, 2.0, 1.0], [2.0, 1.0, 2.0]]
    assert hypervolume(front + [[2.0, 2.0, 2.0]], [3, 3, 3]) == hypervolume(front, [3, 3, 3])
