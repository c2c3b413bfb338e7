"""Projection-free online convex optimization (methods.md §11): sets with linear optimization
oracles, the infeasible projection, BOGD_IP and its dynamic- and adaptive-regret ensembles as
torch optimizers, the projected-OGD baseline, and a regret harness with drifting streams."""
from .infeasible import frank_wolfe_projection, infeasible_projection
from .sets import SET_NAMES, Box, ConvexSet, L1Ball, L2Ball, NuclearBall, Simplex, make_set
