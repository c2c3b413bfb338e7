"""Multimodal product towers for recis: PUMGPT (`recis_multimodal.pumgpt`) and HALO
(`recis_multimodal.halo`). See the package README."""
