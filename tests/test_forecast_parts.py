"""Resumable parts are keyed by the settings that made them (core.parts, the weather forecast)."""
import json
import logging

import numpy as np
import pytest
import xarray as xr

from core.parts import keyed_folder
from core.run import compose_config, run
from weather.test_weather_domain import TINY


def test_keyed_folder_clears_parts_of_other_settings(tmp_path, caplog):
    folder, joined = tmp_path / "parts", tmp_path / "joined.zarr"
    key = {"sample": {"temperature": 1.0, "interval": (0, -1)}, "seed": 0}
    assert keyed_folder(folder, key) == (folder, False)        # new: nothing to clear
    assert json.loads((folder / "settings.json").read_text())["seed"] == 0
    (folder / "part_0.pt").write_text("a")
    (joined / "x").mkdir(parents=True)
    # the same settings (as JSON reads them back: tuples are lists) keep the parts
    assert keyed_folder(folder, {**key, "sample": {"temperature": 1.0, "interval": [0, -1]}},
                        also=(joined,)) == (folder, False)
    assert (folder / "part_0.pt").is_file() and joined.is_dir()
    with caplog.at_level(logging.WARNING, logger="core.parts"):
        _, cleared = keyed_folder(folder, {**key, "sample": {"temperature": 0.3, "interval": [0, -1]}},
                                  also=(joined, tmp_path / "absent.nc"))
    assert cleared and not (folder / "part_0.pt").exists() and not joined.exists()
    assert [r.getMessage() for r in caplog.records if "sample.temperature" in r.getMessage()
            and "joined.zarr" in r.getMessage()]
    assert json.loads((folder / "settings.json").read_text())["sample"]["temperature"] == 0.3
    # parts without settings (written before the key existed) are not trusted
    (folder / "settings.json").unlink()
    (folder / "part_0.pt").write_text("a")
    assert keyed_folder(folder, key)[1] and not (folder / "part_0.pt").exists()
    # an empty folder without settings has nothing to clear
    (folder / "settings.json").unlink()
    assert keyed_folder(folder, key) == (folder, False)


FAST = TINY + ["train.steps=2", "domain.forecast.max_inits=1", "domain.forecast.lead_steps=2",
               "domain.forecast.flops_members=0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("weather_parts_train")
    run(compose_config(FAST + ["task=train"]), run_dir)
    return run_dir / "checkpoints" / "last.pt"


def test_forecast_rerun_with_other_settings_recomputes(checkpoint, tmp_path, caplog):
    over = FAST + [f"checkpoint={checkpoint}", "task=forecast"]
    store = tmp_path / "forecast.zarr"

    def forecast(*extra):
        m = run(compose_config(over + list(extra)), tmp_path)
        return m, xr.open_zarr(store, consolidated=True)["geopotential"].load()

    m, old = forecast("domain.forecast.members=3")
    assert old.sizes["number"] == 3 and m["forecast/resumed_inits"] == 0
    parts = sorted((tmp_path / "forecast_parts").glob("init_*.zarr"))
    assert len(parts) == 1

    with caplog.at_level(logging.WARNING, logger="core.parts"):
        m, new = forecast("domain.forecast.members=2", "sample.temperature=0.3")
    assert m["forecast/members"] == 2 and m["forecast/resumed_inits"] == 0
    assert new.sizes["number"] == 2                              # the store, not just the metric
    assert not np.array_equal(new.values, old.isel(number=slice(0, 2)).values)
    assert any("settings changed" in r.getMessage() for r in caplog.records)

    # the same settings again: the part is reused as it is, and the store is the same
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "forecast_parts").rglob("*")}
    m, again = forecast("domain.forecast.members=2", "sample.temperature=0.3")
    assert m["forecast/resumed_inits"] == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "forecast_parts").rglob("*")} == stamp
    np.testing.assert_array_equal(again.values, new.values)


def test_kill_9_during_a_forecast_resumes_to_the_uninterrupted_store(checkpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    over = FAST + ["domain.forecast.max_inits=5", "domain.forecast.init_every_hours=48",
                   f"checkpoint={checkpoint}", "task=forecast"]
    run(compose_config(over), tmp_path / "whole")
    whole = xr.open_zarr(tmp_path / "whole" / "forecast.zarr", consolidated=True)["geopotential"].load()
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    proc = subprocess.Popen([sys.executable, "-m", "core.run", *over, f"hydra.run.dir={killed}"], cwd=repo,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline and \
            not list((killed / "forecast_parts").glob("init_*.zarr")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list((killed / "forecast_parts").glob("init_*.zarr"))
    assert 1 <= len(done) < 5, f"{len(done)} of 5 parts when killed: the test needs a kill mid-forecast"
    m = run(compose_config(over), killed)
    assert m["forecast/resumed_inits"] == len(done)
    again = xr.open_zarr(killed / "forecast.zarr", consolidated=True)["geopotential"].load()
    np.testing.assert_array_equal(again.values, whole.values)
