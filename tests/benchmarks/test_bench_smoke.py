"""Smoke test of ``benchmarks/bench_peers.py`` at toy size (no timing is asserted).

It checks that the harness still drives causalzoo's engine one compiled call per window
(the progress-bar stand-in of the engine worker raises if a call runs another number of
steps), writes its JSON and CSV, and says so when torch is missing instead of failing.
"""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_peers():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import bench_peers

        yield bench_peers
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_torch_missing_is_reported(bench_peers):
    # The package's interpreter has no torch: the rows are skipped with a reason.
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed in this interpreter")
    torch_version, pyro_version, note = bench_peers.torch_available(sys.executable)
    assert torch_version is None and pyro_version is None
    assert "--torch-python" in note


@pytest.mark.slow
def test_engine_worker_round_trip(bench_peers, tmp_path):
    genes, rounds, steps = 16, 2, 3
    report = bench_peers.main([
        "--variants", "engine-vae", "--no-torch", "--cells", "200", "--genes", str(genes),
        "--batch", "32", "--steps", str(steps), "--rounds", str(rounds),
        "--out", str(tmp_path), "--tag", "smoke",
    ])
    batch = report["batches"]["32"]
    row = batch["rows"]["engine-vae"]
    assert "error" not in row
    assert [w["round"] for w in row["windows"]] == list(range(rounds))
    assert all(w["steps"] == steps and w["cells_per_s"] > 0 for w in row["windows"])
    assert row["ready"]["first_call_s"] > 0 and row["ready"]["xla_compile_s"] > 0
    # forward MACs of the fitted parameters: encoder G-128-128-2k, decoder k-128-128-G, k = 10
    macs = genes * 128 + 128 * 128 + 128 * 20 + 10 * 128 + 128 * 128 + 128 * genes
    assert row["final"]["macs_per_cell"] == macs
    statuses = {t["target"]: t["status"] for t in batch["targets"]}
    assert statuses["engine VAE >= 1.5x torch.compile loop"] == "not measured"
    assert statuses["engine-vae XLA compile < 30 s"] in ("MET", "NOT MET")
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["batches"]["32"]["rows"]["engine-vae"]["cells_per_s"] == row["cells_per_s"]
    with open(tmp_path / "smoke.csv") as fh:
        (line,) = list(csv.DictReader(fh))
    assert line["variant"] == "engine-vae" and float(line["cells_per_s"]) > 0
