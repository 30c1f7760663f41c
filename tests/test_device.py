"""Devices, precision and compilation (all on the CPU): device selection with a faked GPU, the
process-group backend, tensors on the configured device, bf16/fp16 training that resumes exactly,
checkpoints that load on any device, compile, and the error for a missing domain extra."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import device as D
from core import distributed
from core.errors import ConfigError
from core.run import compose_config, run
from core.train import load_checkpoint, train
from tests.test_train import Crash, tiny_digits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_gpus(monkeypatch):
    """A machine that claims two CUDA GPUs (nothing is ever put on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_device_selection_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve("auto") == torch.device("cpu")
    assert D.resolve("cpu") == torch.device("cpu")
    for setting in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="no CUDA GPU.*device=cpu"):
            D.resolve(setting)
    with pytest.raises(ConfigError, match="not a device; choose auto, cpu, cuda, cuda:N or mps"):
        D.resolve("tpu")


def test_device_selection_with_faked_gpus(fake_gpus, monkeypatch):
    assert D.resolve("auto") == torch.device("cuda", 0)
    assert D.resolve("cuda") == torch.device("cuda", 0)
    assert D.resolve("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="GPU 2 does not exist.*has 2"):
        D.resolve("cuda:2")
    with pytest.raises(ConfigError, match="not a device"):
        D.resolve("cuda:x")
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on the node
    assert D.resolve("auto") == torch.device("cuda", 1)
    assert D.resolve("cuda") == torch.device("cuda", 1)
    assert D.resolve("cpu") == torch.device("cpu")


def test_mps_only_when_asked_and_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert D.resolve("auto") == torch.device("cpu")  # auto never picks MPS
    assert D.resolve("mps") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no MPS"):
        D.resolve("mps")


@pytest.mark.parametrize("setting,backend", [("cuda:1", "nccl"), ("cpu", "gloo")])
def test_process_group_backend_follows_the_device(fake_gpus, monkeypatch, setting, backend):
    started, chosen = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: started.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    distributed.init(D.resolve(setting))
    assert started == [backend]
    assert chosen == ([torch.device("cuda", 1)] if backend == "nccl" else [])


def test_ddp_gets_the_ranks_gpu(monkeypatch, tmp_path):
    """Under a process group on GPUs, DDP wraps the model with device_ids=[its GPU]."""
    wrapped = []

    class RecordingDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None):
            super().__init__()
            wrapped.append(device_ids)
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    model, data, tcfg = tiny_digits()
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordingDDP)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "shard", lambda items: items)
    tcfg.steps = 1
    train(model, len(data), lambda idx: (data.x[idx], data.cond[idx]), tcfg, tmp_path)
    assert wrapped == [None]  # on the CPU (gloo): no device_ids
    tcfg.device, wrapped[:] = "cuda:1", []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no GPU to move to
    with pytest.raises((RuntimeError, AssertionError)):  # the batch cannot go to a GPU here
        train(model, len(data), lambda idx: (data.x[idx], data.cond[idx]), tcfg, tmp_path / "gpu")
    assert wrapped == [[1]]


def test_to_device_moves_nested_batches():
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [torch.ones(3), "label"]), "n": 3}
    moved = D.to_device(batch, "meta")
    assert moved["x"].device.type == "meta"
    assert moved["pair"][0].device.type == "meta" and moved["pair"][1][0].device.type == "meta"
    assert moved["pair"][1][1] == "label" and moved["n"] == 3
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)


def _digits(tmp_path, *extra):
    return compose_config(["domain=digits", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2",
                           "train.steps=4", "train.batch_size=16", "train.log_every=1", "train.warmup=1",
                           "sample.num_samples=6", "sample.batch_size=6", "sample.flops_samples=0",
                           "progress=false", "device=cpu", *extra])


def test_train_and_sample_keep_every_tensor_on_the_device(tmp_path, monkeypatch):
    """Parameters, inputs and outputs of every network pass are on the configured device, in
    training and in sampling; the samples come back to the CPU in fp32."""
    seen = []
    real_train = train

    def watching_train(model, *args, **kwargs):
        def hook(module, inputs, output):
            tensors = [t for t in (*module.parameters(recurse=False), *inputs,
                                   *(output if isinstance(output, tuple) else (output,)))
                       if isinstance(t, torch.Tensor)]
            seen.extend(t.device for t in tensors)
        for m in model.modules():
            m.register_forward_hook(hook)
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr("core.run.train", watching_train)
    metrics = run(_digits(tmp_path, "task=train"), tmp_path / "run")
    assert metrics["train_steps"] == 4 and seen and set(seen) == {torch.device("cpu")}
    seen.clear()

    real_generate = __import__("core.run", fromlist=["generate"]).generate

    def watching_generate(model, scheduler, cond, *args, **kwargs):
        seen.extend([p.device for p in model.parameters()] + [cond.device])
        return real_generate(model, scheduler, cond, *args, **kwargs)

    monkeypatch.setattr("core.run.generate", watching_generate)
    metrics = run(_digits(tmp_path, "task=sample", "sample.precision=bf16"), tmp_path / "run")
    assert metrics["device"] == "cpu" and set(seen) == {torch.device("cpu")}
    samples = torch.load(tmp_path / "run" / "samples.pt", weights_only=True)["samples"]
    assert samples.dtype == torch.float32 and samples.device.type == "cpu"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_runs_and_resumes_exactly(tmp_path, precision):
    model, data, tcfg = tiny_digits()
    tcfg.precision = precision
    batch = lambda idx: (data.x[idx], data.cond[idx])  # noqa: E731
    dtypes = []
    linear = next(m for m in model.refiner.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    stats = train(model, len(data), batch, tcfg, tmp_path / "straight")
    handle.remove()
    assert dtypes and set(dtypes) == {D.PRECISIONS[precision]}  # the passes ran under autocast
    assert stats["final_loss"] == stats["final_loss"]  # finite
    reference = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert all(t.dtype == torch.float32 for t in reference["model"].values() if t.is_floating_point())
    assert (reference["grad_scaler"] is not None) == (precision == "fp16")

    def crash(step, logs):
        if step == 4:
            raise Crash

    model2, _, _ = tiny_digits()
    with pytest.raises(Crash):
        train(model2, len(data), batch, tcfg, tmp_path / "crashed", on_step=crash)
    model3, _, _ = tiny_digits()
    tcfg.resume = True
    train(model3, len(data), batch, tcfg, tmp_path / "crashed")
    resumed = load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.pt")
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    if precision == "fp16":
        assert resumed["grad_scaler"]["scale"] == reference["grad_scaler"]["scale"]


def test_precision_and_compile_mode_settings_are_checked():
    with pytest.raises(ConfigError, match="train.precision=fp8 is not a precision; choose fp32, bf16, fp16"):
        compose_config(["domain=digits", "train.precision=fp8"])
    with pytest.raises(ConfigError, match="sample.precision=half"):
        compose_config(["domain=digits", "sample.precision=half"])
    with pytest.raises(ConfigError, match="compile_mode=fast"):
        compose_config(["domain=digits", "train.compile_mode=fast"])


def test_a_gpu_checkpoint_loads_on_the_cpu(tmp_path, monkeypatch):
    """Checkpoints are read with map_location="cpu": one whose tensors were saved on a GPU loads
    on this CPU-only machine (torch.load without it refuses)."""
    model, data, tcfg = tiny_digits()
    tcfg.steps = 1
    train(model, len(data), lambda idx: (data.x[idx], data.cond[idx]), tcfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    gpu_file = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:  # what torch.save records for tensors on cuda:0
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, gpu_file)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu_file, weights_only=True)
    loaded = load_checkpoint(gpu_file)
    for name, tensor in state["model"].items():
        assert loaded["model"][name].device.type == "cpu" and torch.equal(loaded["model"][name], tensor)


def test_compile_trains_the_same_model(tmp_path, monkeypatch):
    """train.compile runs the forward pass through torch.compile (here its eager backend: the
    graph capture without a C++ build), with the same result and plain checkpoint keys."""
    calls = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        calls.append(kwargs)
        return real_compile(module, backend="eager")

    batch_of = lambda data: (lambda idx: (data.x[idx], data.cond[idx]))  # noqa: E731
    model, data, tcfg = tiny_digits()
    tcfg.steps = 3
    train(model, len(data), batch_of(data), tcfg, tmp_path / "plain")
    monkeypatch.setattr(torch, "compile", eager_compile)
    model2, _, _ = tiny_digits()
    tcfg.compile = True
    train(model2, len(data), batch_of(data), tcfg, tmp_path / "compiled")
    assert calls == [{"mode": None}]
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    compiled = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt")["model"]
    assert set(plain) == set(compiled)  # no _orig_mod. prefixes
    for name in plain:
        assert torch.allclose(plain[name], compiled[name], atol=1e-6), name


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)


BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None  # not installed\n"


def test_the_core_imports_without_the_domain_packages():
    domain_packages = ["torch_geometric", "networkx", "scipy", "sklearn", "matplotlib", "xarray",
                       "zarr", "dask", "healpy", "pandas", "netCDF4", "fsspec", "numcodecs"]
    code = BLOCK.format(names=domain_packages) + (
        "import core.run, core.train, core.sampler, core.pyramid, core.refiner, core.device\n"
        "cfg = core.run.compose_config(['domain=graph'])\n"
        "print(cfg.domain.name)\n")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "graph"


def test_a_missing_domain_package_names_the_extra(tmp_path):
    code = BLOCK.format(names=["torch_geometric"]) + (
        "from core.run import cli\n"
        f"sys.argv = ['run', 'domain=graph', 'train.steps=1', 'hydra.run.dir={tmp_path / 'run'}']\n"
        "cli()\n")
    out = _python(code)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == ("error: domain 'graph' needs the package 'torch-geometric', which is not installed; "
                         "install the domain's extra: pip install -e \".[graph]\" (or pip install "
                         "\"coarse2fine[graph]\"; \".[all]\" installs every domain)"), out.stderr
    assert "Traceback" not in out.stderr


def test_the_extras_cover_every_domain():
    """pyproject.toml: one extra per built-in domain, [all] of them, and the tests install all."""
    tomllib = pytest.importorskip("tomllib")
    from core.plugins import BUILTIN_DOMAINS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(BUILTIN_DOMAINS) <= set(extras)
    assert extras["all"] == [f"coarse2fine[{','.join(sorted(BUILTIN_DOMAINS))}]"]
    assert "coarse2fine[all]" in extras["test"]
    assert not any(d.startswith(("torch-geometric", "xarray", "networkx")) for d in project["dependencies"])
    assert json.dumps(extras)  # plain strings


def test_compile_trains_the_graph_model_whose_loss_runs_numpy(tmp_path, monkeypatch):
    """The graph loss builds its pyramids with numpy: compiled training runs it eagerly between
    the compiled pieces (traced, it failed) and ends where eager training does."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend="eager"))
    over = ["domain=graph", "progress=false", "domain.model.d_model=16", "domain.model.layers=1",
            "domain.model.heads=2", "train.batch_size=4", "train.steps=2", "task=train", "device=cpu"]
    eager = run(compose_config(over), tmp_path / "eager")
    compiled = run(compose_config(over + ["train.compile=true"]), tmp_path / "compiled")
    assert compiled["train_steps"] == 2
    assert abs(compiled["final_loss"] - eager["final_loss"]) < 1e-4 * abs(eager["final_loss"])
