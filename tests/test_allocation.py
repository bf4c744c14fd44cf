"""Per-layer allocation from a sensitivity profile: budget met, monotone, graceful when tight."""

import doctest
import itertools
import random

import pytest

from autocompress import allocation
from autocompress.allocation import Allocation, allocate, allocate_bits, allocate_ratios

BITS = (8, 6, 4, 3, 2)


def _curve(scale: float) -> dict[int, float]:
    """A convex loss-by-bits curve: the error of b bits grows like 4^-b."""
    return {b: scale * (4.0 ** (8 - b) - 1) for b in BITS}


def _avg_bits(choice, sizes):
    return sum(choice[n] * sizes[n] for n in choice) / sum(sizes[n] for n in choice)


def test_doctest():
    assert doctest.testmod(allocation).failed == 0


@pytest.mark.parametrize("budget", [2.0, 2.5, 3.0, 3.7, 4.0, 5.5, 6.0, 7.9, 8.0])
def test_the_bit_budget_is_met(budget):
    profile = {f"l{i}": _curve(s) for i, s in enumerate((0.01, 0.1, 1.0, 0.5, 0.02))}
    sizes = {"l0": 1000, "l1": 300, "l2": 50, "l3": 4000, "l4": 700}
    found = allocate_bits(profile, sizes, budget)
    assert found.met
    assert _avg_bits(found.choice, sizes) <= budget + 1e-9
    assert found.cost == pytest.approx(_avg_bits(found.choice, sizes))
    assert set(found.choice.values()) <= set(BITS)


def test_a_generous_budget_keeps_every_layer_at_its_best():
    profile = {"a": _curve(1.0), "b": _curve(0.1)}
    assert allocate_bits(profile, {"a": 10, "b": 10}, 8.0).choice == {"a": 8, "b": 8}
    assert allocate_bits(profile, {"a": 10, "b": 10}, 16.0).loss == 0.0


def test_a_more_sensitive_layer_never_gets_fewer_bits_than_a_less_sensitive_one_of_equal_size():
    rng = random.Random(0)
    for _ in range(200):
        scales = [rng.uniform(0.001, 10) for _ in range(6)]
        profile = {f"l{i}": _curve(s) for i, s in enumerate(scales)}
        sizes = dict.fromkeys(profile, 256)
        found = allocate_bits(profile, sizes, rng.uniform(2.0, 8.0))
        assert found.met
        for (a, sa), (b, sb) in itertools.combinations(zip(profile, scales, strict=True), 2):
            if sa > sb:
                assert found.choice[a] >= found.choice[b], (scales, found.choice)
            elif sb > sa:
                assert found.choice[b] >= found.choice[a], (scales, found.choice)


def test_the_allocation_matches_exhaustive_search():
    rng = random.Random(1)
    for _ in range(50):
        profile = {f"l{i}": _curve(rng.uniform(0.01, 5)) for i in range(4)}
        sizes = {n: rng.choice((64, 128, 512, 1024)) for n in profile}
        budget = rng.uniform(2.0, 8.0)
        found = allocate_bits(profile, sizes, budget)
        best = min(
            sum(profile[n][b] for n, b in zip(profile, combo, strict=True))
            for combo in itertools.product(BITS, repeat=4)
            if _avg_bits(dict(zip(profile, combo, strict=True)), sizes) <= budget + 1e-9
        )
        # exact up to the dynamic program's rounding of costs
        assert found.loss <= best * 1.02 + 1e-9


def test_a_tight_budget_degrades_gracefully():
    profile = {"a": _curve(1.0), "b": _curve(0.1)}
    sizes = {"a": 10, "b": 30}
    found = allocate_bits(profile, sizes, 1.0)  # below the fewest bits offered
    assert not found.met and found.choice == {"a": 2, "b": 2} and found.cost == 2.0
    just = allocate_bits(profile, sizes, 2.0)
    assert just.met and just.choice == {"a": 2, "b": 2}
    # a little more budget goes to the sensitive layer first
    more = allocate_bits(profile, sizes, 2.5)
    assert more.choice["a"] > 2 and more.choice["b"] == 2
    losses = [allocate_bits(profile, sizes, b).loss for b in (2.0, 3.0, 4.0, 6.0, 8.0)]
    assert losses == sorted(losses, reverse=True)


def test_noisy_profiles_never_reward_fewer_bits():
    # 4 bits measured as *better* than 8 (noise): the solver treats it as no better
    profile = {"a": {8: 0.01, 4: -0.02, 2: 0.3}, "b": {8: 0.0, 4: 0.1, 2: 0.2}}
    found = allocate_bits(profile, {"a": 10, "b": 10}, 8.0)
    assert found.choice == {"a": 8, "b": 8} and found.loss >= 0


def test_json_keys_are_read():
    profile = {"a": {"8": 0.0, "4": 0.3}, "b": {"8": 0.0, "4": 0.01}}
    assert allocate_bits(profile, {"a": 5, "b": 5}, 6.0).choice == {"a": 8, "b": 4}


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.33, 0.5, 0.7, 0.9])
def test_pruning_ratios_meet_the_share_pruned(amount):
    ratios = (0.25, 0.5, 0.75, 0.9)
    profile = {
        "fragile": {r: 5.0 * r**2 for r in ratios},
        "robust": {r: 0.1 * r**2 for r in ratios},
        "mid": {str(r): 1.0 * r**2 for r in ratios},
    }
    sizes = {"fragile": 100, "robust": 100, "mid": 300}
    found = allocate_ratios(profile, sizes, amount)
    pruned = sum(found.choice[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert found.met and pruned >= amount - 1e-9
    assert pruned <= amount + 0.05  # the grid's step at most
    assert found.choice["fragile"] <= found.choice["mid"] <= found.choice["robust"] or amount == 0
    assert all(0.0 <= r <= 0.9 for r in found.choice.values())


def test_pruning_beyond_the_measured_ratios_degrades_gracefully():
    profile = {"a": {0.5: 0.1, 0.9: 1.0}, "b": {0.5: 0.2, 0.9: 2.0}}
    found = allocate_ratios(profile, {"a": 10, "b": 10}, 0.95)
    assert not found.met and found.choice == {"a": 0.9, "b": 0.9}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no options"):
        allocate({"a": {}}, {"a": 1}, 4.0)
    with pytest.raises(ValueError, match="positive size"):
        allocate({"a": {8: 0.0}}, {"a": 0}, 4.0)
    with pytest.raises(ValueError, match="amount"):
        allocate_ratios({"a": {0.5: 0.0}}, {"a": 1}, 1.5)
    with pytest.raises(ValueError):
        Allocation({}, cost=-1.0)
    assert allocate({}, {}, 4.0) == Allocation()


def test_without_a_step_only_the_measured_ratios_are_chosen():
    # shares of 3 heads: 1 or 2 of them; nothing in between can be applied
    curve = {"0.3334": 0.1, "0.6667": 0.4}
    assert allocation.ratio_curve(curve, None) == {1.0: 0.0, 0.6666: 0.1, 0.3333: 0.4}
    profile = {"a": curve, "b": {"0.3334": 0.01, "0.6667": 0.02}}
    found = allocate_ratios(profile, {"a": 10, "b": 10}, 0.4, step=None)
    assert found.choice == {"a": 0.3334, "b": 0.6667} and found.met  # 1 + 2 of 6 heads
    stepped = allocate_ratios(profile, {"a": 10, "b": 10}, 0.4)  # the grid would split shares
    assert set(stepped.choice.values()) - {0.0, 0.3334, 0.6667}
