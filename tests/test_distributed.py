"""Two gloo processes (torchrun) against one: same parameters, same members, one writer."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["domain=digits", "progress=false", "refiner.d_model=32", "refiner.heads=2", "refiner.layers=1",
        "model.label_drop=0.0", "train.steps=4", "train.batch_size=16", "train.ckpt_every=2",
        "train.log_every=1", "sample.num_samples=10", "sample.batch_size=3", "sample.guidance=1.0"]


def launch(nproc: int, overrides: list[str], tmp_path: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if nproc == 1:
        cmd = [sys.executable, "-m", "core.run"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "core.run"]
    proc = subprocess.run(cmd + overrides, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    for nproc in (1, 2):
        launch(nproc, TINY + ["task=train", f"hydra.run.dir={tmp / f'train{nproc}'}"], tmp)
    ckpt = tmp / "train1" / "checkpoints" / "last.pt"
    for nproc in (1, 2):
        launch(nproc, TINY + ["task=sample", f"checkpoint={ckpt}", f"hydra.run.dir={tmp / f'sample{nproc}'}"], tmp)
    return tmp


def test_two_processes_train_like_one(runs):
    one = torch.load(runs / "train1" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(runs / "train2" / "checkpoints" / "last.pt", weights_only=True)
    assert one["step"] == two["step"] == 4
    for name, tensor in one["model"].items():
        assert torch.allclose(tensor, two["model"][name], atol=1e-5, rtol=1e-4), name


def test_members_do_not_depend_on_world_size(runs):
    one = torch.load(runs / "sample1" / "samples.pt", weights_only=True)
    two = torch.load(runs / "sample2" / "samples.pt", weights_only=True)
    assert one["samples"].shape == (10, 1, 8, 8)
    assert torch.equal(one["cond"], two["cond"])
    assert torch.allclose(one["samples"], two["samples"], atol=1e-5)
    metrics = json.loads((runs / "sample2" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["samples"] == 10 and metrics["nfe"] == 4


def test_only_rank_zero_writes(runs):
    run_dir = runs / "train2"
    steps = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # one writer: no step twice
    assert not [p for p in run_dir.rglob("*") if "tmp" in p.name]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.json").is_file()


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["domain=graph", "+cluster=slurm",
                                                       "hydra.launcher.nodes=2",
                                                       "hydra.launcher.tasks_per_node=4"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (2, 4)
    assert cfg.hydra.launcher.name == "c2f-graph"


def test_weather_forecast_is_the_same_on_two_ranks(tmp_path):
    """Initial times are shared between ranks; the joined ensemble equals the one-process one."""
    import numpy as np
    import xarray as xr

    weather = ["domain=weather", "progress=false", "domain.synthetic.years=0.12",
               "domain.train_period=[2015-01-01,2015-01-31]", "domain.val_period=null",
               "domain.test_period=[2015-02-01,2015-02-14]", "domain.nsides=[1,2,4]",
               "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2", "model.num_codes=16",
               "train.steps=2", "train.batch_size=4", "train.warmup=1", "domain.forecast.members=2",
               "domain.forecast.lead_steps=2", "domain.forecast.init_every_hours=72",
               "domain.forecast.max_inits=3"]
    launch(1, weather + ["task=train", f"hydra.run.dir={tmp_path / 'train'}"], tmp_path)
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    for nproc in (1, 2):
        launch(nproc, weather + ["task=forecast", f"checkpoint={ckpt}",
                                 f"hydra.run.dir={tmp_path / f'fc{nproc}'}"], tmp_path)
    one = xr.open_zarr(tmp_path / "fc1" / "forecast.zarr", consolidated=True).load()
    two = xr.open_zarr(tmp_path / "fc2" / "forecast.zarr", consolidated=True).load()
    assert one.sizes["time"] == two.sizes["time"] == 3
    np.testing.assert_array_equal(one["time"].values, two["time"].values)
    np.testing.assert_allclose(one["geopotential"].values, two["geopotential"].values, rtol=1e-5)
