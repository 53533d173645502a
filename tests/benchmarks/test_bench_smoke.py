"""Smoke test of ``benchmarks/bench_peers.py`` at toy size (no timing is asserted).

It checks that the harness still drives causalzoo's engine one compiled call per window
(the progress-bar stand-in of the engine worker raises if a call runs another number of
steps), writes its JSON and CSV, and says so when torch or scvi-tools is missing instead of failing.
Also that ``benchmarks/recovery_dynamical.py --generator citris`` turns the observed
intervention sets into labels per step and fits them, and that ``--tdrl-dynamics linear``
reaches TDRL's generator and its Laplace re-simulation, ``--weight-shift-prior``
the model's configuration, ``--self-lags-only`` LEAP's generator and
``--caring-constant-noise`` CaRiNG's.
"""

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_dir():
    """benchmarks/ on sys.path for the module's tests (its scripts import each other)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def bench_peers(bench_dir):
    return importlib.import_module("bench_peers")


def test_torch_missing_is_reported(bench_peers):
    # The package's interpreter has no torch: the rows are skipped with a reason.
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed in this interpreter")
    torch_version, pyro_version, note = bench_peers.torch_available(sys.executable)
    assert torch_version is None and pyro_version is None
    assert "--torch-python" in note


def test_scvi_missing_is_reported(bench_peers):
    # scvi-tools is optional (not in the bench extra): its row is skipped with a reason.
    if importlib.util.find_spec("scvi") is not None:
        pytest.skip("scvi-tools is installed in this interpreter")
    version, note = bench_peers.scvi_available(sys.executable)
    assert version is None
    assert "--scvi-python" in note


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


@pytest.fixture(scope="module")
def bench_streaming(bench_dir):
    return importlib.import_module("bench_streaming")


def test_streaming_writer_appends_nb_counts_chunk_by_chunk(bench_streaming, tmp_path):
    import anndata
    import numpy as np
    import scipy.sparse as sp

    # the NB draws by inversion have the NB's mean, variance and zero mass
    rng = np.random.default_rng(0)
    mu, theta = np.full((40000, 2), 1.5, np.float32), np.array([0.4, 3.0], np.float32)
    x = sp.csr_matrix(bench_streaming._nb_sparse(rng, mu, theta), shape=mu.shape).toarray()
    np.testing.assert_allclose(x.mean(0), 1.5, rtol=0.05)
    np.testing.assert_allclose(x.var(0), 1.5 + 1.5**2 / theta, rtol=0.1)
    np.testing.assert_allclose((x == 0).mean(0), (theta / (theta + 1.5)) ** theta, atol=0.01)
    # the file is written in appended chunks (1,200 cells, 500 at a time) and reads back whole
    path = tmp_path / "cells.h5ad"
    info = bench_streaming.write_h5ad(path, 1200, 300, seed=0, chunk=500)
    adata = anndata.read_h5ad(path)
    assert adata.shape == (1200, 300) and sp.issparse(adata.X)
    assert adata.X.nnz == info["nnz"] and 0.03 < info["density"] < 0.2
    counts = adata.X.toarray()
    assert np.all(counts == np.round(counts)) and np.all(counts.sum(1) > 0)
    assert list(adata.obs["perturbation"].cat.categories[:2]) == ["control", "P0"]
    backed = anndata.read_h5ad(path, backed="r")
    np.testing.assert_array_equal(backed.X[495:505].toarray(), counts[495:505])
    backed.file.close()


def test_engine_ablations_still_find_the_compiled_call(bench_peers):
    """bench_engine.py --ablations patches a copy of fit_svi right after its
    ``run_call = jax.jit(run_call, ...)`` statement; if that statement changes shape, every
    ablation would be skipped (it happened once: the jit call gained arguments)."""
    import inspect

    import bench_engine
    from causalzoo.inference import svi

    src = inspect.getsource(svi.fit_svi)
    end = bench_engine._end_of_jit_statement(src)
    assert end is not None
    statement = src[src.index(bench_engine._JIT_START):end]
    assert statement.count("(") == statement.count(")") and statement.endswith(")\n")
    assert "device_data" in src[:src.index(bench_engine._JIT_START)]


@pytest.fixture(scope="module")
def recovery_dynamical(bench_dir):
    return importlib.import_module("recovery_dynamical")


def test_citris_labels_per_step_reach_the_model(recovery_dynamical, capsys):
    """``--generator citris``: the observed intervention sets become per-step codes, the
    fit runs with lag-weight changes and prints a row per fit (toy size)."""
    data = recovery_dynamical.make_data(argparse.Namespace(
        generator="citris", domains=1, per_domain=6, n_steps=5, latents=2, noise_scale=0.1,
        seed=0, noise="gaussian"))
    codes, names = recovery_dynamical.domain_labels(data)
    assert codes.shape == (6, 5) and names == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(codes, data.u[..., 0] + 2 * data.u[..., 1])
    recovery_dynamical.main([
        "--generator", "citris", "--latents", "2", "--domains", "1", "--per-domain", "12",
        "--n-steps", "5", "--steps", "4", "--batch-size", "4", "--hidden", "8",
        "--weight-shift-scale", "0.5", "--control", "stationary",
    ])
    out = capsys.readouterr().out
    assert "\ntrue | " in out and "\nstationary | " in out
    with pytest.raises(SystemExit):
        recovery_dynamical.main(["--generator", "citris", "--snapshot"])


def test_restart_criterion_marks_the_highest_marginal_likelihood(recovery_dynamical, capsys):
    """``--restart-criterion marginal_ll``: each fit's row gains ``marginal_ll`` and the
    fit with the highest is marked kept (toy size)."""
    recovery_dynamical.main([
        "--latents", "2", "--domains", "2", "--per-domain", "6", "--n-steps", "4",
        "--lags", "1", "--steps", "4", "--batch-size", "4", "--hidden", "8",
        "--restarts", "2", "--restart-criterion", "marginal_ll", "--no-control",
    ])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("labels | "))
    keys = lines[header].split(" | ")
    rows = [dict(zip(keys, line.split(" | "), strict=True)) for line in lines[header + 1:]
            if line.startswith("true | ")]
    lls = [float(r["marginal_ll"]) for r in rows]
    assert len(rows) == 2 and lls[0] != lls[1]
    assert [r["kept"] for r in rows] == ["yes" if v == max(lls) else "" for v in lls]


def test_tdrl_linear_dynamics_reach_the_generator_and_the_laplace_resimulation(
        recovery_dynamical):
    """``--tdrl-dynamics linear`` draws ``tdrl_changing(dynamics="linear")``, and ``--noise
    laplace`` re-simulates that draw with the linear transition (no leaky ReLU): every step
    is the lagged drive plus Laplace noise of the generator's scale (no fit)."""
    from causalzoo.identifiability.generators import tdrl_changing

    args = argparse.Namespace(
        generator="tdrl", domains=4, per_domain=200, latents=3, lags=2, n_steps=6,
        noise_scale=0.5, n_changing=2, graph_density=0.3, tdrl_dynamics="linear", seed=1,
        noise="gaussian", tdrl_noise_change=False)
    data = recovery_dynamical.make_data(args)
    expected = tdrl_changing(n_domains=4, n_per_domain=200, n_latent=3, n_steps=6,
                             noise_scale=0.5, dynamics="linear", seed=1)
    np.testing.assert_array_equal(data.x, expected.x)
    laplace = recovery_dynamical.make_data(argparse.Namespace(**{**vars(args),
                                                                 "noise": "laplace"}))
    z = laplace.z.astype(np.float64)
    w = laplace.transition[laplace.u].astype(np.float64)
    eps = np.stack([z[:, t] - np.einsum("nli,nlij->nj", z[:, t - 2:t][:, ::-1], w)
                    for t in range(2, 6)])
    assert eps.std() == pytest.approx(0.5, rel=0.05)
    kurtosis = ((eps - eps.mean()) ** 4).mean() / eps.var() ** 2
    assert kurtosis == pytest.approx(6.0, rel=0.2)  # Laplace: 6; Gaussian: 3
    with pytest.raises(SystemExit):  # TDRL's option, refused for another generator
        recovery_dynamical.main(["--tdrl-dynamics", "linear"])


def test_tdrl_noise_change_and_caring_domains_reach_the_generators(recovery_dynamical):
    """``--tdrl-noise-change`` draws ``tdrl_changing(noise_change=True)`` (refused for
    another generator), and ``--domains`` splits CaRiNG's process into domains with their
    own noise scales, ``caring(n_domains=...)`` (no fit)."""
    from causalzoo.identifiability.generators import caring, tdrl_changing

    tdrl = argparse.Namespace(
        generator="tdrl", domains=4, per_domain=50, latents=3, lags=2, n_steps=6,
        noise_scale=1.0, n_changing=2, graph_density=0.3, tdrl_dynamics="leaky_relu",
        seed=2, noise="gaussian", tdrl_noise_change=True)
    data = recovery_dynamical.make_data(tdrl)
    expected = tdrl_changing(n_domains=4, n_per_domain=50, n_latent=3, n_steps=6,
                             noise_scale=1.0, noise_change=True, seed=2)
    np.testing.assert_array_equal(data.x, expected.x)
    assert np.ptp(data.noise_scale, axis=0).min() > 0
    with pytest.raises(SystemExit):
        recovery_dynamical.main(["--tdrl-noise-change"])
    data = recovery_dynamical.make_data(argparse.Namespace(
        generator="caring", domains=4, per_domain=25, n_steps=5, latents=3, noise_scale=0.5,
        caring_constant_noise=True, seed=3, noise="gaussian"))
    expected = caring(n_units=100, n_steps=5, noise_scale=0.5, noise_coupled=False,
                      n_domains=4, seed=3)
    np.testing.assert_array_equal(data.x, expected.x)
    np.testing.assert_array_equal(data.u, np.repeat(np.arange(4), 25))


def test_history_scale_reaches_the_model(recovery_dynamical, capsys):
    """``--history-scale`` sets ``DynamicalConfig(history_scale=True)``: refused by the
    model's own check without the flow prior, and fitted with it (toy size, CaRiNG)."""
    from causalzoo import CausalZooError

    toy = ["--generator", "caring", "--latents", "3", "--domains", "1", "--per-domain", "8",
           "--n-steps", "4", "--lags", "1", "--steps", "3", "--batch-size", "4",
           "--hidden", "8", "--no-control", "--history-scale", "--transition", "linear"]
    with pytest.raises(CausalZooError, match="history_scale=True needs"):
        recovery_dynamical.main(toy)
    recovery_dynamical.main([*toy, "--prior", "flow"])
    assert "\ntrue | " in capsys.readouterr().out


def test_weight_shift_prior_reaches_the_model(recovery_dynamical, capsys, monkeypatch):
    """``--weight-shift-prior laplace`` builds the model with
    ``DynamicalConfig(weight_shift_prior="laplace")`` and fits it (toy size, TDRL linear);
    without ``--weight-shift-scale`` it is refused."""
    built = []
    original = recovery_dynamical.cz.DynamicalCausalVAE.from_arrays

    def recording(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append(model.config)
        return model

    monkeypatch.setattr(recovery_dynamical.cz.DynamicalCausalVAE, "from_arrays", recording)
    toy = ["--generator", "tdrl", "--tdrl-dynamics", "linear", "--latents", "2",
           "--domains", "2", "--per-domain", "6", "--n-steps", "4", "--lags", "1",
           "--steps", "3", "--batch-size", "4", "--hidden", "8", "--no-control",
           "--weight-shift-prior", "laplace"]
    with pytest.raises(SystemExit):
        recovery_dynamical.main(toy)
    assert built == []
    recovery_dynamical.main([*toy, "--weight-shift-scale", "0.2"])
    assert "\ntrue | " in capsys.readouterr().out
    assert [(c.weight_shift_prior, c.weight_shift_scale) for c in built] == [("laplace", 0.2)]


def _record_drawn_data(recovery_dynamical, monkeypatch) -> list:
    """Replace the benchmark's fit by a stub that records the generator draw it was given
    (``make_data(args)``), so a flag's path to the generator is checked without a fit."""
    seen = []
    monkeypatch.setattr(recovery_dynamical, "run", lambda args, *a, **k: seen.append(
        recovery_dynamical.make_data(args)) or {"labels": "true"})
    return seen


def test_self_lags_only_reaches_the_leap_generator(recovery_dynamical, capsys, monkeypatch):
    """``--self-lags-only`` draws ``leap_nonstationary(self_lags_only=True)`` (diagonal lag
    matrices); refused for another generator (no fit)."""
    from causalzoo.identifiability.generators import leap_nonstationary

    seen = _record_drawn_data(recovery_dynamical, monkeypatch)
    recovery_dynamical.main(["--self-lags-only", "--no-control", "--latents", "3",
                             "--domains", "2", "--per-domain", "5", "--seed", "4"])
    assert "\ntrue" in capsys.readouterr().out
    expected = leap_nonstationary(n_domains=2, n_per_domain=5, n_latent=3,
                                  self_lags_only=True, seed=4)
    np.testing.assert_array_equal(seen[0].x, expected.x)
    assert not seen[0].graph[:, ~np.eye(3, dtype=bool)].any()
    with pytest.raises(SystemExit):
        recovery_dynamical.main(["--self-lags-only", "--generator", "tdrl"])


def test_caring_constant_noise_reaches_the_caring_generator(recovery_dynamical, capsys,
                                                            monkeypatch):
    """``--caring-constant-noise`` draws ``caring(noise_coupled=False)``, the paired
    non-identifiable control of CaRiNG's coupled noise; refused for another generator."""
    from causalzoo.identifiability.generators import caring

    seen = _record_drawn_data(recovery_dynamical, monkeypatch)
    common = ["--generator", "caring", "--no-control", "--latents", "3", "--domains", "1",
              "--per-domain", "6", "--n-steps", "5", "--seed", "2"]
    recovery_dynamical.main([*common, "--caring-constant-noise"])
    recovery_dynamical.main(common)
    assert "\ntrue" in capsys.readouterr().out
    for data, coupled in zip(seen, (False, True), strict=True):
        expected = caring(n_units=6, n_steps=5, n_latent=3, noise_coupled=coupled, seed=2)
        np.testing.assert_array_equal(data.x, expected.x)
    assert not np.array_equal(seen[0].x, seen[1].x)
    with pytest.raises(SystemExit):
        recovery_dynamical.main(["--caring-constant-noise"])


def test_leap_linear_dynamics_and_the_stationary_snapshot_control(recovery_dynamical, capsys,
                                                                  monkeypatch):
    """``--leap-dynamics linear`` draws ``leap_nonstationary(dynamics="linear")`` (refused
    for another generator); ``--snapshot-control stationary`` fits snapshot mode with one
    domain for every cell, beside the true labels (toy fit)."""
    from causalzoo.identifiability.generators import leap_nonstationary

    domains = []
    setup = recovery_dynamical.cz.DynamicalCausalVAE.setup_anndata

    def recording(adata, **kwargs):
        domains.append(sorted(set(adata.obs["domain"])))
        return setup(adata, **kwargs)

    monkeypatch.setattr(recovery_dynamical.cz.DynamicalCausalVAE, "setup_anndata", recording)
    toy = ["--leap-dynamics", "linear", "--snapshot", "--no-sequence", "--latents", "2",
           "--domains", "3", "--per-domain", "6", "--n-steps", "4", "--lags", "1",
           "--steps", "3", "--batch-size", "4", "--hidden", "8", "--particles", "4",
           "--transition", "linear", "--seed", "3"]
    recovery_dynamical.main([*toy, "--snapshot-control", "stationary"])
    out = capsys.readouterr().out
    assert "\nsnapshot | " in out and "\nsnapshot-stationary | " in out
    assert domains == [["0", "1", "2"], ["0"]]
    args = argparse.Namespace(
        generator="leap", domains=3, per_domain=6, latents=2, lags=1, n_steps=4,
        noise_scale=0.1, self_lags_only=False, leap_dynamics="linear", seed=3,
        noise="gaussian")
    expected = leap_nonstationary(n_domains=3, n_per_domain=6, n_latent=2, n_lags=1,
                                  n_steps=4, dynamics="linear", seed=3)
    np.testing.assert_array_equal(recovery_dynamical.make_data(args).x, expected.x)
    with pytest.raises(SystemExit):
        recovery_dynamical.main(["--leap-dynamics", "linear", "--generator", "tdrl"])
