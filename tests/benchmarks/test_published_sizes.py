"""Smoke test of ``benchmarks/published_sizes.py`` (toy sizes; no result is asserted).

Every setting's recipe is a valid ``recovery_dynamical.py`` command line at the published
size; a quick run records one JSON line per fit and writes the table; a rerun skips what is
recorded, an interrupted run keeps the fits it finished, and ``--max-minutes`` starts no fit
once its time is spent.
"""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def published_sizes():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module("published_sizes")
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_every_recipe_is_a_valid_command_at_the_published_size(published_sizes):
    ps = published_sizes
    rd = ps.recovery_dynamical
    sizes = {"leap": (8, 20, 7500), "leap-noise1": (8, 20, 7500), "tdrl": (8, 5, 40000),
             "caring": (3, 1, 40000)}
    for setting, spec in ps.SETTINGS.items():
        true = rd.parse_args(ps.recipe(setting, 4, "true"))
        assert (true.latents, true.domains, true.per_domain) == sizes[setting]
        assert (true.seed, true.steps, true.batch_size) == (4, 20000, 256)
        arm, extra = spec["control"]
        control = rd.parse_args(ps.recipe(setting, 4, arm))
        # the control arm differs from the true one by its own flags only
        assert ps.recipe(setting, 4, arm) == ps.recipe(setting, 4, "true") + extra
        assert control.caring_constant_noise == (setting == "caring")
        quick = rd.parse_args(ps.recipe(setting, 4, "true", quick=True))
        assert (quick.per_domain, quick.steps, quick.batch_size) == (8, 4, 8)
        assert quick.latents == true.latents and quick.seed == 4
        assert ps.recipe_id(ps.recipe(setting, 4, "true")) != ps.recipe_id(
            ps.recipe(setting, 5, "true"))


def test_quick_run_records_resumes_and_keeps_finished_fits(published_sizes, tmp_path,
                                                           monkeypatch, capsys):
    ps = published_sizes
    ps.main(["--quick", "--rows", "caring", "--seeds", "0", "--out", str(tmp_path)])
    stem = f"published_sizes_{ps.device_name()}_quick"
    records = [json.loads(line) for line in (tmp_path / f"{stem}.jsonl").read_text()
               .splitlines()]
    assert [(r["setting"], r["seed"], r["arm"]) for r in records] == [
        ("caring", 0, "true"), ("caring", 0, "constant-noise")]
    for r in records:
        assert 0 <= r["mcc"] <= 1 and 0 < r["floor_rotation"] < 1
        assert r["recipe_id"] == ps.recipe_id(r["recipe"]) and "--quick" not in r["recipe"]
    assert "--caring-constant-noise" in records[1]["recipe"]
    table = (tmp_path / f"{stem}.md").read_text()
    assert "CaRiNG" in table and f"constant-noise {records[1]['mcc']:.3f}" in table
    capsys.readouterr()

    calls = []

    def failing(setting, seed, arm, quick, progress):
        calls.append((setting, seed, arm))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {**records[0], "seed": seed, "arm": arm,
                "recipe_id": ps.recipe_id(ps.recipe(setting, seed, arm, quick))}

    monkeypatch.setattr(ps, "run_fit", failing)
    # recorded fits are skipped; the run stopped in its second fit keeps its first
    with pytest.raises(KeyboardInterrupt):
        ps.main(["--quick", "--rows", "caring", "--seeds", "0", "1", "2", "--out",
                 str(tmp_path)])
    assert calls == [("caring", 1, "true"), ("caring", 2, "true")]
    kept = ps.read_records(tmp_path / f"{stem}.jsonl")
    assert [(r["seed"], r["arm"]) for r in kept] == [
        (0, "true"), (0, "constant-noise"), (1, "true")]
    assert "0 to run" not in capsys.readouterr().out
    # --max-minutes 0: nothing new starts, the table is still written
    ps.main(["--quick", "--rows", "caring", "--seeds", "0", "1", "2", "--out",
             str(tmp_path), "--max-minutes", "0"])
    assert len(calls) == 2 and "--max-minutes 0 reached" in capsys.readouterr().out


def test_table_marks_the_line_and_the_control(published_sizes):
    ps = published_sizes
    base = {"setting": "tdrl", "device": "cpu:0", "jax": "x", "numpyro": "y", "commit": "c",
            "floor_rotation": 0.6, "r2_kernel": 0.9, "shd": 12.0, "n_true_edges": 40,
            "fit_seconds": 90.0}
    records = [{**base, "seed": 0, "arm": "true", "mcc": 0.75},
               {**base, "seed": 0, "arm": "stationary", "mcc": 0.61},
               {**base, "seed": 1, "arm": "true", "mcc": 0.65}]
    table = ps.render_table(records, "t")
    assert "| 0 | **0.750** | 0.600 | stationary 0.610 | 0.90 | 12 (40) | 1.5 |" in table
    assert "| 1 | 0.650 | 0.600 |  |" in table
    assert "mean MCC 0.700 over 2 draw(s), at or above the line on 1" in table
    assert "LEAP" not in table  # settings without records are left out
