"""HALO (arXiv 2502.06812): patch reward models and Gran-DPO for video diffusion."""
