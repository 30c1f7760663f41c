"""Graph benchmark: planar, tree and SBM, measured as the published generators are measured.

    python benchmarks/graph.py --data-dir ../shared/data/graphs [--sets planar tree sbm]
        [--train-seeds 0 1 2] [--set-train-seeds sbm=0] [--temperature 1 0.85 0.7] [--seeds 0 1]
        [--pooled 512]

For each set and training seed (``configs/experiment/graph_<set>.yaml``, ``--override`` after it):
1. train (``task=train``);
2. choose the sampling temperature and the weights (the EMA or the raw ones, ``--weights``) on
   the validation split: 40 samples per candidate scored against the 32 validation graphs
   (``domain.eval_split=val``); the candidate with the best mean V.U.N. over the training seeds
   wins (then the lower ratio). Then, at that temperature, the
   within-scale refinement rounds (``--refine-rounds``, for a model trained with
   ``--override model.refine=true``; ties go to fewer rounds). Test is not read here;
3. score test once at the chosen setting: 40 samples per sampling seed against the 40 test
   graphs (the published protocol), plain and with constrained draws (``domain.constrain=auto``,
   domain knowledge the published models do not use);
4. score ``--pooled`` samples against all 200 graphs (train + val + test) for tighter MMDs.

A row averages its training seeds x sampling seeds, and gives the range of V.U.N. over them and
the spread of the training-seed means. The ratio is the published one: the mean over degree,
clustering, orbit, spectral and wavelet of MMD(test, generated) / MMD(test, train) (``ratio4``
without the wavelet, as this page reported before). NFE counts every network pass (backbone per
level, edge head per round with an edge to choose and per redraw); backbone-equivalent calls
are FLOPs per graph over the FLOPs of one backbone pass on a graph of the final size. On SBM, V.U.N. is also given under
the published validity test (graph-tool's block fit, where a Python with graph-tool is found; on
the test pieces only, as the fit takes seconds per graph).

Every piece (a run folder) records its config hash and commit and is reused only when they match
(``core.provenance``). Writes ``docs/results/graph.md`` and its twin ``graph.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.build import build_model  # noqa: E402
from core.compute import count_flops  # noqa: E402
from core.io import atomic_path, write_json_atomic  # noqa: E402
from core.plugins import get_domain  # noqa: E402
from core.provenance import check_piece, provenance_label, record_piece  # noqa: E402
from core.run import compose_config, run  # noqa: E402
from core.train import load_weights, resume_override  # noqa: E402
from domains.graph.network import level_features  # noqa: E402
from domains.graph.plugin import splits_for  # noqa: E402

STATS = ("degree", "clustering", "orbit", "spectral", "wavelet")
PUBLISHED = {  # V.U.N. % / ratio, from the shared data README (40 samples vs 40 test graphs)
    "GRAN": {"planar": (0, 2.0), "tree": (0, 607), "sbm": (25, 9.7)},
    "SPECTRE": {"planar": (25, 3.0), "tree": (None, None), "sbm": (52.5, 2.2)},
    "DiGress": {"planar": (77.5, 5.1), "tree": (90, 1.6), "sbm": (60, 1.7)},
    "Iterative local expansion": {"planar": (95, 2.1), "tree": (100, 4.0), "sbm": (45, 10.2)},
    "DeFoG": {"planar": (99.5, 1.6), "tree": (96.5, 1.6), "sbm": (90, 4.9)},
}


def base_overrides(name: str, data_dir: str, override: list[str]) -> list[str]:
    """Set ``name``'s settings: its experiment config, the data folder, then ``--override``."""
    return [f"+experiment=graph_{name}", f"domain.data_dir={data_dir}", "progress=false"] + list(override)


def _stamp(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_piece(base: list[str], seed: int, folder: Path) -> tuple[dict, dict]:
    """The trained run of one set and training seed: (its metrics, its provenance record)."""
    cfg = compose_config(base + ["task=train", f"seed={seed}"])
    record = check_piece(folder, cfg)
    if record is None:
        _stamp(f"train {folder}")
        run(compose_config(base + ["task=train", f"seed={seed}", resume_override(folder)]), folder)
        record = record_piece(folder, cfg)
    return json.loads((folder / "metrics.json").read_text()), record


def sample_piece(opts: list[str], ckpt: Path, folder: Path) -> dict:
    """Sample with ``opts`` from ``ckpt`` and evaluate; cached in ``folder`` under its config."""
    cfg = compose_config(opts + ["task=sample", f"checkpoint={ckpt}"])
    record = check_piece(folder, cfg)
    if record is None:
        _stamp(f"sample + evaluate {folder}")
        m = run(cfg, folder / "sample")
        m.update(run(compose_config(opts + ["task=evaluate", f"samples_path={folder / 'sample' / 'samples.npz'}"]),
                     folder / "evaluate"))
        write_json_atomic(m, folder / "metrics.json")
        record = record_piece(folder, cfg)
    m = json.loads((folder / "metrics.json").read_text())
    m["provenance"] = provenance_label(record)
    return m


def backbone_flops(base: list[str], ckpt: Path, folder: Path) -> float:
    """FLOPs of one backbone pass (GPS stack and node head) per graph, on the test graphs: the
    unit of backbone-equivalent calls (a full-graph denoiser's call costs about this)."""
    cfg = compose_config(base + ["task=sample", f"checkpoint={ckpt}"])
    record = check_piece(folder, cfg)
    path = folder / "metrics.json"
    if record is None:
        domain = get_domain(cfg.domain.name)
        model = load_weights(build_model(cfg, domain, None), ckpt)
        graphs = splits_for(cfg)["test"]
        rng = np.random.default_rng(0)
        x, edge_index, batch, _, _ = level_features(
            [g.num_nodes for g in graphs], [g.edges for g in graphs], [rng.random(g.num_nodes) for g in graphs],
            [g.num_nodes for g in graphs], [1] * len(graphs), model.refiner.rw_steps)
        with torch.no_grad():
            _, flops = count_flops(model.refiner, x, edge_index, batch)
        write_json_atomic({"backbone_flops_per_graph": flops / len(graphs), "graphs": len(graphs)}, path)
        record_piece(folder, cfg)
    return json.loads(path.read_text())["backbone_flops_per_graph"]


def _mean(runs: list[dict]) -> dict:
    """Numeric metrics averaged over runs (other values from the first)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            vals = [float(r[key]) for r in runs if key in r]
            out[key] = sum(vals) / len(vals)
    return out


def choose(val: dict) -> tuple:
    """The candidate (temperature, weights) or number of rounds with the best mean validation
    V.U.N. (then the lower mean ratio, then the lower temperature and the EMA weights, or fewer
    rounds). Reads only the validation runs it is given."""
    def key(t):
        runs = val[t]
        vun = np.mean([r["vun"] for r in runs]) if all(r.get("vun") == r.get("vun") for r in runs) else 0.0
        return (-round(float(vun), 6), float(np.mean([r["ratio"] for r in runs])), t)
    return min(val, key=key)


def _weights_opts(weights: str) -> tuple[list[str], str]:
    """(sample overrides, folder suffix) of the weights a model samples with: its EMA (``ema``;
    the raw ones when it was trained without EMA) or its raw weights (``raw``)."""
    return (["sample.use_ema=false"], "_raw") if weights == "raw" else ([], "")


def select_temperature(base: list[str], train_seeds, temperatures, weights, root: Path):
    """Train each seed, sample each candidate (temperature, weights), score against the
    validation split only, and choose: (chosen (temperature, weights), {candidate: validation
    runs}, {seed: train piece})."""
    candidates = [(t, w) for t in temperatures for w in weights]
    trained, val = {}, {c: [] for c in candidates}
    for ts in train_seeds:
        folder = root / f"s{ts}"
        trained[ts] = train_piece(base, ts, folder / "train")
        ckpt = folder / "train" / "checkpoints" / "last.pt"
        for t, w in candidates:
            opts, tag = _weights_opts(w)
            val[t, w].append(sample_piece(base + opts + [f"sample.temperature={t}", "seed=1000",
                                                         "domain.eval_split=val", "domain.published_sbm=false"],
                                          ckpt, folder / f"val_t{t:g}{tag}"))
    return choose(val), val, trained


def select_rounds(base: list[str], train_seeds, temperature: float, weights: str, rounds, root: Path,
                  plain: list[dict]):
    """Refinement rounds at the chosen temperature and weights, on the validation split only
    (R = 0 is that candidate's own runs, ``plain``): (chosen rounds, {rounds: validation runs})."""
    val = {0: plain}
    opts, tag = _weights_opts(weights)
    for r in [r for r in rounds if r > 0]:
        val[r] = [sample_piece(base + opts + [f"sample.temperature={temperature}", f"sample.refine_rounds={r}",
                                              "seed=1000", "domain.eval_split=val", "domain.published_sbm=false"],
                               root / f"s{ts}" / "train" / "checkpoints" / "last.pt",
                               root / f"s{ts}" / f"val_t{temperature:g}{tag}_R{r}") for ts in train_seeds]
    return choose(val), val


def _rounds_opts(rounds: int) -> tuple[list[str], str]:
    """(sample overrides, folder suffix) of a number of refinement rounds (none for 0)."""
    return ([f"sample.refine_rounds={rounds}"], f"_R{rounds}") if rounds else ([], "")


def train_seeds_for(name: str, args) -> list[int]:
    """The training seeds of set ``name``: ``--train-seeds``, unless ``--set-train-seeds`` names it."""
    for item in args.set_train_seeds:
        key, _, seeds = item.partition("=")
        if key == name:
            return [int(v) for v in seeds.split(",") if v != ""]
    return list(args.train_seeds)


def evaluate_set(name: str, args) -> dict:
    base = base_overrides(name, args.data_dir, args.override)
    root = Path(args.out) / name
    train_seeds = train_seeds_for(name, args)
    # a model trained without EMA has one set of weights: "raw" would sample the same again
    has_ema = float(compose_config(base).train.ema) > 0
    candidate_weights = list(dict.fromkeys(args.weights)) if has_ema else ["ema"]
    (chosen, weights), val, trained = select_temperature(base, train_seeds, args.temperature,
                                                         candidate_weights, root)
    _stamp(f"{name}: temperature {chosen:g} with the {weights} weights chosen on val")
    rounds, val_rounds = select_rounds(base, train_seeds, chosen, weights, args.refine_rounds, root,
                                       val[chosen, weights])
    # the chosen setting's sample overrides and folder suffix: its weights, then its rounds
    (weights_opts, weights_tag), (rounds_opts, rounds_tag) = _weights_opts(weights), _rounds_opts(rounds)
    setting_opts, setting_tag = weights_opts + rounds_opts, weights_tag + rounds_tag
    if rounds:
        _stamp(f"{name}: {rounds} refinement rounds chosen on val")
    out = {"set": name, "train_seeds": train_seeds, "chosen_temperature": chosen, "chosen_weights": weights,
           "chosen_refine_rounds": rounds, "val": [], "rows": [], "pooled": []}
    candidates = [(t, w, 0, val[t, w]) for t, w in val] + \
        [(chosen, weights, r, v) for r, v in val_rounds.items() if r]
    for t, w, r, runs in candidates:
        m = _mean(runs)
        out["val"].append({"set": name, "temperature": t, "weights": w, "refine_rounds": r,
                           "chosen": (t, w, r) == (chosen, weights, rounds), "vun": m.get("vun"),
                           "ratio": m["ratio"], "valid": m.get("valid"), "nfe": m.get("nfe"), "runs": len(runs)})
    for mode, extra in (("plain", []), ("constrained", ["domain.constrain=auto"])):
        runs, per_train, flops_unit = [], [], []
        for ts in train_seeds:
            folder = root / f"s{ts}"
            ckpt = folder / "train" / "checkpoints" / "last.pt"
            flops_unit.append(backbone_flops(base, ckpt, folder / "backbone_flops"))
            mine = []
            for ss in args.seeds:
                sub = folder / f"test_t{chosen:g}{setting_tag}_{mode}_r{ss}"
                m = sample_piece(base + extra + setting_opts + [f"sample.temperature={chosen}", f"seed={ss}"],
                                 ckpt, sub)
                m["train_seconds"] = trained[ts][0]["train_seconds"]
                m["parameters"] = trained[ts][0]["parameters"]
                m["backbone_equivalent"] = m.get("flops_per_sample", float("nan")) / flops_unit[-1]
                mine.append(m)
            runs += mine
            per_train.append(_mean(mine))
        row = _mean(runs)
        row.update(set=name, setting=f"T = {chosen:g}" + (", raw weights" if weights == "raw" else "")
                   + (f", R = {rounds}" if rounds else ""), weights=weights,
                   constrained=mode == "constrained",
                   runs=len(runs), train_seeds=list(train_seeds), sampling_seeds=list(args.seeds),
                   vun_range=[min(r["vun"] for r in runs), max(r["vun"] for r in runs)],
                   vun_train_seed_means=[p["vun"] for p in per_train],
                   provenance=sorted({r["provenance"] for r in runs}),
                   train_provenance=[provenance_label(trained[ts][1]) for ts in train_seeds])
        if "vun_published" in runs[0]:
            row["vun_published_range"] = [min(r["vun_published"] for r in runs),
                                          max(r["vun_published"] for r in runs)]
        out["rows"].append(row)
    if args.pooled:
        for ts in train_seeds:
            folder = root / f"s{ts}"
            m = sample_piece(base + setting_opts + [f"sample.temperature={chosen}", "seed=0",
                                                   "domain.eval_split=pooled", "domain.published_sbm=false",
                                                   f"sample.num_samples={args.pooled}", "sample.batch_size=64"],
                             folder / "train" / "checkpoints" / "last.pt",
                             folder / f"pooled_t{chosen:g}{setting_tag}")
            out["pooled"].append({"set": name, "train_seed": ts, **{k: m.get(k) for k in (
                "vun", "vun_published", "valid", "unique", "novel", *[f"mmd_{s}" for s in STATS],
                "reference_graphs", "provenance")}, "samples": args.pooled})
    return out


def _f(v, digits=4):
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _pct(v, lo_hi=None):
    if v is None:
        return "-"
    s = f"{100 * v:.1f}"
    if lo_hi and lo_hi[1] > lo_hi[0]:
        s += f" ({100 * lo_hi[0]:.1f}-{100 * lo_hi[1]:.1f})"
    return s


def write_page(results: list[dict], args, path: Path) -> None:
    cmd = f"python benchmarks/graph.py {' '.join(sys.argv[1:])}".rstrip()
    lines = ["# Graph generation on the benchmark splits", "", f"Command: `{cmd}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
             "CPU only. Training seeds: " + "; ".join(f"{r['set']} {' '.join(map(str, r['train_seeds']))}"
                                                     for r in results) + ". Sampling seeds "
             + " ".join(map(str, args.seeds)) + " (40 graphs each, against the 40 test graphs). "
             "Squared MMD with the Gaussian total-variation kernel; ratio = mean over degree, "
             "clustering, orbit, spectral and wavelet of MMD(test, generated) / MMD(test, train), as "
             "published (ratio4: the four without wavelet; statistics whose train-vs-test MMD is 0, "
             "clustering on trees, are left out). The temperature and the weights (EMA or raw) were "
             "chosen on the validation split (below); test was scored once at them.", "",
             "NFE: backbone passes per graph (one per level), and in brackets every network pass "
             "(the edge head once per edge round with an edge to choose, and per redraw). "
             "Backbone-equivalent calls: FLOPs "
             "per graph / FLOPs of one backbone pass on a graph of the final size, the unit in which "
             "a full-graph denoiser (DiGress, DeFoG: 50-1000 calls) pays. V.U.N. (published test): SBM "
             "validity with graph-tool's block fit, as SPECTRE, DiGress and DeFoG score it "
             "(`docs/results/graph_validity.md`); our own fit's V.U.N. is the column before.", "",
             "## Ours", "",
             "| set | setting | V.U.N. % (range) | V.U.N. %, published test | training-seed means % | "
             "valid % | unique % | novel % | ratio | ratio4 | degree | clustering | orbit | spectral | "
             "wavelet | NFE backbone (all) | backbone-equivalent calls | GFLOPs / graph | s / graph | "
             "redraws / graph | train s | params | runs |",
             "|" + "---|" * 23]
    for res in results:
        for r in res["rows"]:
            setting = r["setting"] + (", constrained" if r["constrained"] else "")
            lines.append(
                f"| {r['set']} | {setting} | {_pct(r['vun'], r['vun_range'])} | "
                f"{_pct(r.get('vun_published'), r.get('vun_published_range'))} | "
                f"{' / '.join(f'{100 * v:.1f}' for v in r['vun_train_seed_means'])} | "
                f"{_pct(r['valid'])} | {_pct(r['unique'])} | {_pct(r['novel'])} | {_f(r['ratio'], 3)} | "
                f"{_f(r['ratio4'], 3)} | " + " | ".join(_f(r[f'mmd_{s}']) for s in STATS) + " | "
                f"{r['nfe_backbone']:.0f} ({r['nfe']:.0f}) | {_f(r['backbone_equivalent'], 3)} | "
                f"{_f(r.get('flops_per_sample', float('nan')) / 1e9, 3)} | {r['seconds_per_sample']:.4f} | "
                f"{_f(r.get('redraws_per_sample'), 3)} | {r['train_seconds']:.0f} | {r['parameters']:.0f} | "
                f"{r['runs']} |")
    lines += ["", "## Settings chosen on the validation split", "",
              "40 samples per candidate and training seed against the 32 validation graphs "
              "(`domain.eval_split=val`); means over the training seeds. The temperature and the "
              "weights (EMA or raw) first, without refinement; then the refinement rounds at them.", "",
              "| set | temperature | weights | refinement rounds | NFE (all) | V.U.N. % | valid % | ratio | chosen |",
              "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for v in res["val"]:
            lines.append(f"| {v['set']} | {v['temperature']:g} | {v.get('weights', 'ema')} | {v.get('refine_rounds', 0)} | "
                         f"{_f(v.get('nfe'), 3)} | {_pct(v['vun'])} | {_pct(v['valid'])} | "
                         f"{_f(v['ratio'], 3)} | {'yes' if v['chosen'] else ''} |")
    if any(res["pooled"] for res in results):
        lines += ["", f"## {args.pooled} samples against all 200 graphs", "",
                  "At the chosen setting, one sampling seed per training seed, scored against "
                  "train + val + test pooled (`domain.eval_split=pooled`; no ratio: train is in the "
                  "reference).", "",
                  "| set | training seed | V.U.N. % | V.U.N. %, published test | " + " | ".join(STATS) + " |",
                  "|---|---|---|---|" + "---|" * len(STATS)]
        for res in results:
            for p in res["pooled"]:
                lines.append(f"| {p['set']} | {p['train_seed']} | {_pct(p['vun'])} | {_pct(p.get('vun_published'))} | "
                             + " | ".join(_f(p[f'mmd_{s}']) for s in STATS) + " |")
    lines += ["", "## Published (V.U.N. % / ratio)", "", "| model | planar | tree | SBM |", "|---|---|---|---|"]
    for model, res in PUBLISHED.items():
        cells = [f"{_f(v)} / {_f(r)}" if v is not None else "-" for v, r in (res["planar"], res["tree"], res["sbm"])]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Published numbers come from the papers (GPU training for hours to days; 40 samples "
              "against the test graphs); ours from the command above on the machine stated."]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json_atomic({"page": path.name, "command": cmd, "results": results}, path.with_suffix(".json"))
    print("wrote", path, "and", path.with_suffix(".json"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "graphs"))
    ap.add_argument("--sets", nargs="+", default=["planar", "tree", "sbm"])
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set-train-seeds", nargs="*", default=[], metavar="SET=SEEDS",
                    help="training seeds of one set, e.g. sbm=0 or planar=0,1,2 (else --train-seeds)")
    ap.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.85, 0.7],
                    help="candidates, chosen on the validation split")
    ap.add_argument("--weights", nargs="+", default=["ema", "raw"], choices=["ema", "raw"],
                    help="weights to sample with, chosen on the validation split with the temperature "
                         "(ema: the EMA of the weights, train.ema in the experiment configs)")
    ap.add_argument("--refine-rounds", type=int, nargs="+", default=[0],
                    help="within-scale refinement rounds tried on val at the chosen temperature "
                         "(> 0 needs --override model.refine=true)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds on test")
    ap.add_argument("--pooled", type=int, default=512, help="samples against all graphs (0: skip)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "benchmark_graph"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "graph.md"))
    ap.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for every run")
    args = ap.parse_args(argv)
    results = [evaluate_set(name, args) for name in args.sets]
    write_page(results, args, Path(args.doc))


if __name__ == "__main__":
    main()
