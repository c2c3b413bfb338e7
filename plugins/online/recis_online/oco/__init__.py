"""Projection-free online convex optimization (methods.md §11): sets with linear optimization
oracles, the infeasible projection, BOGD_IP and its dynamic- and adaptive-regret ensembles as
torch optimizers, the projected-OGD baseline, and a regret harness with drifting streams.

Modules: `sets` (K and its oracle), `projections` (exact projections: baseline and tests only),
`infeasible` (Frank-Wolfe infeasible projection), `options` (validated options and [I] defaults),
`learners` (the algorithms on one tensor), `optim` (the torch optimizers), `streams` and `regret`.
"""
from .infeasible import frank_wolfe_projection, infeasible_projection
from .optim import BOGDIP, BOGDIPAdaptive, BOGDIPEnsemble, ProjectedOGD
from .sets import SET_NAMES, Box, ConvexSet, L1Ball, L2Ball, NuclearBall, Simplex, make_set

__all__ = ["frank_wolfe_projection", "infeasible_projection", "BOGDIP", "BOGDIPAdaptive",
           "BOGDIPEnsemble", "ProjectedOGD", "SET_NAMES", "Box", "ConvexSet", "L1Ball", "L2Ball", "NuclearBall",
           "Simplex", "make_set"]
