"""The ``causalzoo`` command line: ``models`` and ``demo``."""

from __future__ import annotations

import pandas as pd
import pytest

from causalzoo.cli import build_parser, main


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sparse_perturbation" in out
    assert "causalzoo.api.SparsePerturbationVAE" in out


def test_parser_requires_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["no_such_command"])
    args = build_parser().parse_args(["demo", "--steps", "5"])
    assert args.steps == 5 and args.cells == 500 and not args.no_progress


def test_cli_reports_user_errors(capsys, tmp_path):
    # a CausalZooError inside a command becomes exit status 2 and one line on stderr
    code = main(["demo", "--steps", "0", "--out", str(tmp_path / "demo"), "--no-progress"])
    assert code == 2
    assert "causalzoo: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--steps", "30", "--cells", "20", "--out", str(out), "--no-progress"])
    assert code == 0
    for name in ("scores.csv", "summary.csv", "elbo.png", "predicted_vs_observed.png",
                 "mask.png", "predictions.h5ad"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "model").is_dir() and (out / "model" / "causalzoo.json").is_file()
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert {"model", "additive", "no_change"} <= set(summary.index)
    assert "pearson_delta" in summary.columns
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["method"]) == {"model", "additive", "no_change"}
    printed = capsys.readouterr().out
    assert "holding out" in printed and "wrote" in printed
