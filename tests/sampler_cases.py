"""Fixed models and sampler settings whose samples are pinned in ``tests/data/sampler_reference.pt``.

The reference was drawn with the sampler as it was before schedulers and pipeline extensions
existed (commit 9bec9e0); ``test_pipeline_reference.py`` checks that the pipeline still draws
exactly those samples. The graph cases were drawn again once a graph's draws stopped depending
on its batch (uniforms for its own nodes and edges only, triangle layers on every level): every
grid, diffusion, AR and weather case is still the 9bec9e0 draw. Every model here is built from a
fixed torch seed, so its weights are the same on every run.
"""
from __future__ import annotations

import torch

from core.grid import GridOps
from core.model import ScaleModel
from core.pyramid import ResidualPyramid
from core.quantizers import IdentityQuantizer, ScalarQuantizer
from core.refiner import ScaleTransformer
from core.targets import make_head

SIZES = [1, 2, 4, 8]


def grid_model(target="index", mask="block_causal", num_classes=10, calibrate=True):
    torch.manual_seed(0)
    ops = GridOps(SIZES)
    quantizer = IdentityQuantizer(1) if target == "continuous" else ScalarQuantizer(1, 16, -1.5, 1.5)
    refiner = ScaleTransformer(1, [ops.positions(k) for k in range(len(SIZES))], num_classes,
                               d_model=32, layers=2, heads=2, mask=mask)
    head = make_head(target, 32, quantizer)
    model = ScaleModel(ResidualPyramid(ops, quantizer), refiner, head, 1, num_classes).eval()
    if not calibrate:
        return model
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model.calibrate_shift((x, None))
    return model


def graph_model(**kw):
    from domains.graph.model import GraphScaleModel
    torch.manual_seed(0)
    return GraphScaleModel(d_model=16, layers=1, heads=2, **kw).eval()


def ddpm_model(sampler="ddim", steps=10):
    from domains.image.baselines import DDPM, UNet
    torch.manual_seed(0)
    return DDPM(UNet(num_classes=10, width=8, mults=(1, 2, 2), blocks=1), sampler=sampler, steps=steps).eval()


def ar_model():
    from domains.image.baselines import CodeAR
    from domains.image.tokenizer import VQTokenizer
    torch.manual_seed(0)
    tokenizer = VQTokenizer(channels=8, width=8).eval()
    torch.manual_seed(1)
    return CodeAR(tokenizer, d_model=32, layers=1, heads=2).eval()


# name -> (model builder, builder kwargs, conditions, sampler settings)
CASES = {
    "grid-index-guided": (grid_model, {}, [3, 5, 7, 9, 0],
                          dict(guidance=2.0, schedule="linear", top_k=5)),
    "grid-index-topp": (grid_model, {"mask": "markov"}, [1, 2, 3], dict(temperature=0.8, top_p=0.9)),
    "grid-bits": (grid_model, {"target": "bits"}, [0, 4], dict(guidance=1.0)),
    "grid-continuous-shift": (grid_model, {"target": "continuous"}, [2, 6],
                              dict(guidance=1.0, shift_scale=1, shift_sigma=0.5)),
    "grid-index-shift": (grid_model, {}, [2, 6, 8], dict(shift_scale=2, shift_sigma=1.0)),
    "graph-plain": (graph_model, {}, [12, 7, 1], {}),
    "graph-walk-constrained": (graph_model, dict(edge_rounds=4, edge_layers=1, separated=True,
                                                 edge_order="walk", constraint="planar"),
                               [14, 9], dict(max_redraws=5)),
    "graph-tree-constrained": (graph_model, dict(edge_rounds=2, constraint="tree"), [10, 6],
                               dict(max_redraws=50)),
    "ddim-guided": (ddpm_model, {}, [1, 4], dict(guidance=2.0)),
    "ddpm-ancestral": (ddpm_model, {"sampler": "ddpm", "steps": 12}, [3, 8], dict(guidance=1.0)),
    "ar-guided": (ar_model, {}, [2, 5], dict(guidance=1.5, schedule="linear")),
}

WEATHER = ["domain=weather", "progress=false", "domain.synthetic.years=0.12",
           "domain.train_period=[2015-01-01,2015-01-31]", "domain.test_period=[2015-02-01,2015-02-14]", "domain.val_period=null",
           "domain.nsides=[1,2,4]", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2",
           "model.num_codes=16", "domain.state_noise=0.0"]   # the case the reference was drawn with


def weather_case():
    """The weather model of a tiny synthetic store and the conditions of two training items."""
    from core.run import compose_config
    from domains.weather import fields as F
    from domains.weather.plugin import build_model
    cfg = compose_config(WEATHER)
    data = F.load_split(cfg, "train")
    torch.manual_seed(0)
    model = build_model(cfg, data).eval()
    _, cond = data.batch([0, 1])
    return model, cond, dict(temperature=1.0)
