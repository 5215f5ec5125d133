"""The coverage simulation: true values by hand, and a nominal interval covering near 95%."""
import math

import numpy as np
import pytest

from vlmbias.audit.coverage import population, simulate_coverage, true_values


def test_true_values_by_hand():
    p, q = population(0.8, 2), np.array([0.5, 0.5])
    t = true_values(p, q, k=20, n_ndkl=200, rng=np.random.default_rng(0))
    assert t["fd"] == pytest.approx(4.0) and t["tvd"] == pytest.approx(0.3)
    assert t["max_skew_uniform"] == pytest.approx(math.log(1.6)) == pytest.approx(t["max_skew_dataset"])
    assert t["ndkl_uniform"] > 0


def test_wilson_covers_near_nominal_and_every_interval_is_measured():
    t = simulate_coverage(ks=(200,), shares=(0.7,), replicates=80, n_boot=100, attributes=("gender",))
    assert set(t["metric"]) == {"proportion", "rd", "fd", "tvd", "max_skew_uniform", "max_skew_dataset",
                                "ndkl_uniform", "ndkl_dataset"}
    wilson = t[(t.metric == "proportion") & (t.interval_method == "wilson")].iloc[0]
    assert 0.88 <= wilson["coverage"] <= 1.0 and wilson["replicates"] == 80
    assert t.set_index("metric").loc["rd", "true_value"] == pytest.approx(40.0)
