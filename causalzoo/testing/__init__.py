"""Tools for writing your own identifiability tests: strategies, assertions, profiles.

Needs ``hypothesis`` (``pip install 'causalzoo[test]'``). Not imported by ``import
causalzoo``: importing ``causalzoo.testing`` registers the hypothesis profiles of
:mod:`causalzoo.testing.profiles` and loads the one named by
``CAUSALZOO_HYPOTHESIS_PROFILE`` if that variable is set.

>>> import causalzoo as cz
>>> from causalzoo.testing import assert_recovers
>>> data = cz.identifiability.generators.ivae(n_segments=5, n_per_segment=100, n_latent=3)
>>> assert_recovers(data.z ** 3, data).score > 0.999
True
"""

try:
    import hypothesis  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "causalzoo.testing needs hypothesis: pip install 'causalzoo[test]' (or hypothesis)."
    ) from err

from . import assertions, profiles, strategies
from .assertions import (
    RecoveryReport,
    assert_does_not_recover,
    assert_recovers,
    recovery_report,
)
from .profiles import ENV_VAR, active_profile, examples, load_profile, register_profiles
from .strategies import (
    ComponentMap,
    LatentTransform,
    equivalence_transforms,
    ivae_configs,
    monotone_maps,
    permutations,
    sparse_perturbation_configs,
)

register_profiles()
load_profile()

__all__ = [
    "assertions",
    "profiles",
    "strategies",
    "RecoveryReport",
    "assert_recovers",
    "assert_does_not_recover",
    "recovery_report",
    "ENV_VAR",
    "active_profile",
    "examples",
    "load_profile",
    "register_profiles",
    "ComponentMap",
    "LatentTransform",
    "equivalence_transforms",
    "ivae_configs",
    "monotone_maps",
    "permutations",
    "sparse_perturbation_configs",
]
