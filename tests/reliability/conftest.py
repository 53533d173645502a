"""One small fitted model for the whole reliability suite (every fit compiles), fitted with a
checkpoint so that the resume test continues it instead of fitting again."""

from __future__ import annotations

import pytest
from reliability_helpers import FIT, SMALL, make_adata, setup

from causalzoo import SparsePerturbationVAE


@pytest.fixture(scope="session")
def checkpointed(tmp_path_factory):
    """``(model, checkpoint_dir)``: 4 steps of the small model, checkpointed."""
    directory = tmp_path_factory.mktemp("checkpoint")
    model = SparsePerturbationVAE(setup(make_adata()), **SMALL)
    model.fit(max_steps=4, checkpoint_dir=directory, **FIT)
    return model, directory


@pytest.fixture(scope="session")
def fitted(checkpointed):
    return checkpointed[0]
