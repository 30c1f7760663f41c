"""The example plugin package (docs/examples/c2f-signals) installs with pip into a fresh virtual
environment and trains, samples and evaluates through the CLI there; with it installed, --cfg and
--help work in any argument order and list it."""
import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "c2f-signals"


@pytest.fixture(scope="module")
def signals_python(tmp_path_factory):
    """The python of a new venv (seeing this environment's packages, coarse2fine included) with
    the example installed from a copy of its folder (pip builds it there, not in the repository)."""
    root = tmp_path_factory.mktemp("signals_env")
    source = root / "c2f-signals"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    # no pip of its own: the pip and setuptools of this environment install into it
    venv.create(root / "venv", system_site_packages=True, with_pip=False)
    python = root / "venv" / "bin" / "python"
    # coarse2fine from this checkout, whichever way this environment installed it
    site = next((root / "venv" / "lib").glob("python*/site-packages"))
    (site / "coarse2fine_checkout.pth").write_text(str(REPO) + "\n")
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def _cli(python, *args, cwd, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("C2F_DOMAINS", None)
    return subprocess.run([str(python), "-m", "core.run", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_the_example_trains_samples_and_evaluates_through_the_cli(signals_python, tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli(signals_python, "domain=signals", "train.steps=300", "sample.num_samples=80",
                "sample.batch_size=80", "progress=false", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 300 and metrics["samples"] == 80 and metrics["nfe"] == 7
    assert metrics["judge_test_accuracy"] > 0.95
    assert metrics["class_accuracy"] > 0.45  # chance: 0.25; 0.59 here at 300 steps, 0.79 at the default 600
    assert metrics["spectrum_distance"] < 10 * metrics["floor_spectrum_distance"]
    assert (run_dir / "samples.png").stat().st_size > 0 and (run_dir / "checkpoints" / "last.pt").is_file()
    installed = subprocess.run([str(signals_python), "-c", "import c2f_signals, core; print(c2f_signals.__file__)"],
                               capture_output=True, text=True, cwd=tmp_path)
    assert str(EXAMPLE) not in installed.stdout  # the installed package ran, not the repository's copy


@pytest.mark.parametrize("order", ["settings first", "flag first"])
def test_cfg_job_works_in_any_order_with_the_plugin_installed(signals_python, tmp_path, order):
    args = ["domain=signals", "train.steps=5", "--cfg", "job"]
    if order == "flag first":
        args = args[2:] + args[:2]
    proc = _cli(signals_python, *args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: signals" in proc.stdout and "steps: 5" in proc.stdout


def test_help_lists_the_plugin_domain(signals_python, tmp_path):
    proc = _cli(signals_python, "--help", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    domains = next(line for line in proc.stdout.splitlines() if line.startswith("domains:"))
    assert {"digits", "graph", "image", "weather", "signals"} <= set(domains[len("domains:"):].replace(",", " ").split())
