"""Cached pieces record the config and commit that made them, and a stale piece is refused."""
import json
import shutil
import subprocess

import pytest

from core.provenance import (StalePieceError, amend_piece, check_piece, config_hash,
                             current_commit, provenance_label, record_piece)

CONFIG = {"seed": 0, "model": {"target": "index", "num_codes": 256},
          "train": {"steps": 100, "batch_size": 64}, "domain": {"scales": [1, 2, 4]}}


def test_hash_ignores_key_order_and_follows_values():
    reordered = {"domain": {"scales": [1, 2, 4]}, "train": {"batch_size": 64, "steps": 100},
                 "model": {"num_codes": 256, "target": "index"}, "seed": 0}
    assert config_hash(reordered) == config_hash(CONFIG)
    assert len(config_hash(CONFIG)) == 16
    changed = json.loads(json.dumps(CONFIG))
    changed["train"]["steps"] = 101
    assert config_hash(changed) != config_hash(CONFIG)
    changed = json.loads(json.dumps(CONFIG))
    changed["domain"]["scales"] = [1, 4, 2]  # list order is part of the config
    assert config_hash(changed) != config_hash(CONFIG)


def test_hash_of_an_omegaconf_config_is_that_of_its_resolved_dict():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"a": 3, "b": "${a}", "nested": {"c": [1, 2]}})
    assert config_hash(cfg) == config_hash({"nested": {"c": [1, 2]}, "b": 3, "a": 3})


def test_record_then_check_with_the_same_config(tmp_path):
    folder = tmp_path / "piece"
    assert check_piece(folder, CONFIG) is None  # nothing there yet
    record = record_piece(folder, CONFIG, steps_done=100)
    stored = json.loads((folder / "provenance.json").read_text())
    assert stored == record
    assert record["config_hash"] == config_hash(CONFIG) and record["config"] == CONFIG
    assert record["steps_done"] == 100 and record["created"].endswith("+00:00")
    (folder / "metrics.json").write_text("{}")
    reordered = dict(reversed(list(CONFIG.items())))
    assert check_piece(folder, reordered) == record
    assert provenance_label(record).startswith(f"cfg {record['config_hash']} @ ")


def test_check_with_a_changed_config_names_the_changed_key(tmp_path):
    folder = tmp_path / "piece"
    record_piece(folder, CONFIG)
    changed = json.loads(json.dumps(CONFIG))
    changed["model"]["target"] = "bits"
    changed["train"]["lr"] = 1e-4
    with pytest.raises(StalePieceError) as err:
        check_piece(folder, changed)
    msg = str(err.value)
    assert str(folder) in msg
    assert 'model.target: "index" -> "bits"' in msg
    assert "train.lr: <absent> -> 0.0001" in msg
    assert "train.steps" not in msg  # unchanged keys are not listed
    assert "delete the folder or pass another --out" in msg


def test_many_changes_are_cut_short(tmp_path):
    old = {f"k{i}": i for i in range(12)}
    record_piece(tmp_path, old)
    with pytest.raises(StalePieceError, match="and 7 more"):
        check_piece(tmp_path, {k: v + 1 for k, v in old.items()})


def test_legacy_piece_without_provenance_is_refused(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"fd": 1.0}))
    with pytest.raises(StalePieceError, match="no provenance.json") as err:
        check_piece(tmp_path, CONFIG)
    assert "delete the folder or pass another --out" in str(err.value)


def test_commit_is_a_non_empty_string(tmp_path):
    commit = current_commit()
    assert isinstance(commit, str) and commit
    assert current_commit(tmp_path) == "unknown"  # not a repository: no error
    assert provenance_label({"config_hash": "1a2b3c4d5e6f7a8b", "commit": "9bec9e0" + "0" * 33}) \
        == "cfg 1a2b3c4d5e6f7a8b @ 9bec9e0"
    assert provenance_label({"config_hash": "ab", "commit": "9bec9e0aaaa+dirty"}) == "cfg ab @ 9bec9e0+dirty"


def test_amending_a_dependency_that_does_not_matter_is_recorded(tmp_path):
    """A piece keyed on a setting that cannot change it (the DDPM on a tokenizer it never reads)
    is re-keyed, and its record says so; any other difference stays a refusal."""
    old = {"piece": "train", "overrides": {"seed": "0"}, "tokenizer": "abc"}
    new = {**old, "tokenizer": None}
    first = record_piece(tmp_path, old)
    with pytest.raises(StalePieceError, match="tokenizer"):
        check_piece(tmp_path, new)
    assert amend_piece(tmp_path, {**new, "overrides": {"seed": "1"}}, "no", ["tokenizer"]) is None
    record = amend_piece(tmp_path, new, "the DDPM never reads the tokenizer", ["tokenizer"])
    assert check_piece(tmp_path, new) == record and record["created"] == first["created"]
    assert record["amended"][0]["old_hash"] == first["config_hash"]
    assert record["amended"][0]["keys"] == ["tokenizer"] and "(amended)" in provenance_label(record)
    assert amend_piece(tmp_path, new, "again", ["tokenizer"]) is None   # nothing differs now


def _mnist_benchmark():
    """benchmarks/mnist.py as a module (benchmarks/ is not a package on the test path)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "mnist_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / "mnist.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_mnist_benchmark_refuses_a_stale_piece(tmp_path):
    import argparse

    bench = _mnist_benchmark()
    args = argparse.Namespace(out=str(tmp_path), max_minutes=None, report_only=False)
    b = bench.Bench(args)
    made = []
    config = {"piece": "score", "overrides": b.hashed(["sample.guidance=2.0", "progress=false"])}
    first = b.piece(tmp_path / "p", config, lambda: made.append(1) or {"fd": 1.0})
    again = b.piece(tmp_path / "p", config, lambda: made.append(1) or {"fd": 2.0})
    assert made == [1] and first["fd"] == again["fd"] == 1.0 and "cfg " in again["provenance"]
    # where the files are or how chatty the run is does not define a piece; a setting does
    assert b.hashed(["sample.guidance=2.0", "progress=true"]) == config["overrides"]
    changed = {"piece": "score", "overrides": b.hashed(["sample.guidance=3.0"])}
    with pytest.raises(StalePieceError, match="sample.guidance"):
        b.piece(tmp_path / "p", changed, lambda: {"fd": 3.0})


def test_the_mnist_tokenizer_piece_is_refused_when_a_default_changes(tmp_path, monkeypatch):
    """The tokenizer piece is keyed on its resolved settings: the same overrides under another
    default codebook size are another tokenizer, refused rather than reused."""
    import argparse

    bench = _mnist_benchmark()
    args = argparse.Namespace(out=str(tmp_path), max_minutes=None, report_only=False, data_dir="/data",
                              quiet=True, ema=0.999, tokenizer_steps=2000)
    made = []
    monkeypatch.setattr(bench, "run", lambda cfg, folder: made.append(cfg.domain.tokenizer.num_codes)
                        or {"train_seconds": 1.0})
    real = bench.compose_config
    bench.Bench(args).tokenizer(0)
    bench.Bench(args).tokenizer(0)
    assert made == [real(["domain=image"]).domain.tokenizer.num_codes]   # the second call reused it
    monkeypatch.setattr(bench, "compose_config", lambda over: real(over + ["domain.tokenizer.num_codes=8"]))
    with pytest.raises(StalePieceError, match="num_codes"):
        bench.Bench(args).tokenizer(0)


def test_results_twin_holds_the_rows_of_its_page(tmp_path):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "results_twin", Path(__file__).resolve().parents[1] / "benchmarks" / "results_twin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = tmp_path / "r.md"
    page.write_text("# R\n\nCommand: `python x.py --a 1`\n\n## Ours\n\n| run | FD |\n|---|---|\n"
                    "| a | 1.5 |\n| b | 2 |\n\ntext\n")
    out = module.twin(page)
    assert out["command"] == "python x.py --a 1"
    assert out["tables"] == [{"section": "Ours", "columns": ["run", "FD"],
                              "rows": [{"run": "a", "FD": "1.5"}, {"run": "b", "FD": "2"}]}]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_results_pages_do_not_make_the_commit_dirty(tmp_path):
    # a benchmark rewrites docs/results while it runs: its own pieces must not read "+dirty"
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "r.md").write_text("a")
    (tmp_path / "code.py").write_text("a")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    (tmp_path / "docs" / "results" / "r.md").write_text("b")
    assert not current_commit(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("b")
    assert current_commit(tmp_path).endswith("+dirty")
