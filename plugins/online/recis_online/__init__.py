"""recis_online: online learning on the recis stack (projection-free online convex optimization,
regret measurement, STREAM rule distillation)."""
