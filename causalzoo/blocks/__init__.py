"""Composable pieces of zoo models: likelihoods, sparsity priors, mechanisms, lagged
transition priors, networks."""

from . import dag, likelihoods, mechanisms, nn, priors, transitions
from .likelihoods import NB, ZINB, Gaussian, Likelihood, Poisson, get_likelihood
from .mechanisms import LinearGaussianSCM, additive_shift
from .nn import MLP, GaussianEncoder
from .priors import BernoulliMask, Horseshoe, SparsityPrior, StraightThroughBernoulli
from .transitions import FlowLaggedTransition, LaggedTransition

__all__ = [
    "dag",
    "likelihoods",
    "mechanisms",
    "nn",
    "priors",
    "transitions",
    "NB",
    "ZINB",
    "Gaussian",
    "Likelihood",
    "Poisson",
    "get_likelihood",
    "LinearGaussianSCM",
    "additive_shift",
    "MLP",
    "GaussianEncoder",
    "BernoulliMask",
    "Horseshoe",
    "SparsityPrior",
    "StraightThroughBernoulli",
    "FlowLaggedTransition",
    "LaggedTransition",
]
