"""The weather sweep chooses its setting on the validation period alone."""
import math

import pytest

from benchmarks.weather_sweep import choose, validation_criterion

LEADS = ["24h", "48h"]


def _metrics(val_ratios: dict, test_value: float) -> dict:
    """Model and oracle CRPS on validation (ratios as given per channel) and on test."""
    m = {}
    for ch, ratios in val_ratios.items():
        for lead, r in zip(LEADS, ratios):
            m[f"val/oracle/crps/{ch}/{lead}"] = 2.0
            m[f"val/crps/{ch}/{lead}"] = 2.0 * r
            m[f"oracle/crps/{ch}/{lead}"] = 2.0
            m[f"crps/{ch}/{lead}"] = test_value
    return m


def test_the_worst_lead_decides_and_test_scores_take_no_part():
    runs = {"0.0": _metrics({"z500": [1.02, 1.12], "t850": [1.03, 1.06]}, test_value=2.0),
            "0.1": _metrics({"z500": [1.04, 1.07], "t850": [1.03, 1.05]}, test_value=5.0)}
    assert validation_criterion(runs["0.0"], ["z500", "t850"], LEADS) == pytest.approx(1.12)
    assert choose(runs, ["z500", "t850"], LEADS) == "0.1"
    # test scores replaced by garbage (or removed) leave the choice unchanged
    for garbage in (math.nan, -1e9, 1e9):
        spoiled = {v: {k: (garbage if not k.startswith("val/") else x) for k, x in m.items()}
                   for v, m in runs.items()}
        assert choose(spoiled, ["z500", "t850"], LEADS) == "0.1"
    only_val = {v: {k: x for k, x in m.items() if k.startswith("val/")} for v, m in runs.items()}
    assert choose(only_val, ["z500", "t850"], LEADS) == "0.1"


def test_runs_without_a_validation_oracle_are_refused_with_the_reason():
    with pytest.raises(KeyError, match="linear store and a domain.val_period"):
        validation_criterion({"crps/z500/24h": 1.0}, ["z500"], LEADS)
