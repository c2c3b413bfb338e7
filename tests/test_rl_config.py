"""The RL configs: defaults, and a bad value names its option (from Python and from a YAML mapping)."""
import math

import pytest
import torch

from recis.config_utils import from_mapping
from recis.rl import (DEFAULT_STD_EPS, LOSS_TYPES, SCALES, STD_CONVENTIONS, DifficultyFilter, DPOConfig,
                      GRPOConfig, aggregate, group_advantages)


def test_defaults():
    cfg = GRPOConfig()
    assert (cfg.loss_type, cfg.beta, cfg.std, cfg.scale, cfg.inner_steps) == ("grpo", 0.0, "trl", "group", 1)
    assert cfg.epsilons == (0.2, 0.2) and cfg.eps == 1e-4 and cfg.delta is None and cfg.advantage_clip is None
    assert GRPOConfig(epsilon_low=0.1).epsilons == (0.1, 0.1)  # epsilon_high follows epsilon_low
    assert GRPOConfig(std="roll").eps == 1e-6 and GRPOConfig(std="population", std_eps=1e-8).eps == 1e-8
    assert (DPOConfig().beta, DPOConfig().label_smoothing) == (0.1, 0.0)
    assert (DifficultyFilter().low, DifficultyFilter().high) == (0.0, 1.0)
    assert set(DEFAULT_STD_EPS) == set(STD_CONVENTIONS)


@pytest.mark.parametrize("cls,values,error,message", [
    (GRPOConfig, {"epsilon_low": -0.1}, ValueError, r"GRPOConfig.epsilon_low must be a finite number in \[0, 1\], got -0.1"),
    (GRPOConfig, {"epsilon_high": -1.0}, ValueError, r"GRPOConfig.epsilon_high must be a finite number >= 0 or null"),
    (GRPOConfig, {"beta": math.nan}, ValueError, r"GRPOConfig.beta must be a finite number >= 0, got nan"),
    (GRPOConfig, {"loss_type": "ppo"}, ValueError,
     r"GRPOConfig.loss_type must be one of \('grpo', 'bnpo', 'dr_grpo', 'dapo'\), got 'ppo'"),
    (GRPOConfig, {"loss_type": 3}, TypeError, r"GRPOConfig.loss_type must be a string, got int"),
    (GRPOConfig, {"std": "unbiased"}, ValueError,
     r"GRPOConfig.std must be one of \('population', 'trl', 'roll'\), got 'unbiased'"),
    (GRPOConfig, {"scale": "global"}, ValueError, r"GRPOConfig.scale must be one of \('group', 'batch', 'none'\)"),
    (GRPOConfig, {"loss_type": "dr_grpo"}, ValueError,
     r"GRPOConfig.max_completion_length is required with loss_type 'dr_grpo'"),
    (GRPOConfig, {"max_completion_length": 0}, ValueError, r"GRPOConfig.max_completion_length must be an integer >= 1"),
    (GRPOConfig, {"inner_steps": 0}, ValueError, r"GRPOConfig.inner_steps must be an integer >= 1, got 0"),
    (GRPOConfig, {"advantage_clip": 0.0}, ValueError, r"GRPOConfig.advantage_clip must be a finite number > 0"),
    (GRPOConfig, {"delta": 1.1, "epsilon_high": 0.28}, ValueError,
     r"GRPOConfig.delta must exceed 1 \+ epsilon_high = 1.28 \(it caps the ratio above the clip range\), got 1.1"),
    (GRPOConfig, {"std_eps": -1e-6}, ValueError, r"GRPOConfig.std_eps must be a finite number >= 0 or null"),
    (DPOConfig, {"beta": 0.0}, ValueError, r"DPOConfig.beta must be a finite number > 0, got 0.0"),
    (DPOConfig, {"label_smoothing": 0.5}, ValueError, r"DPOConfig.label_smoothing must be a finite number in \[0, 0.5\)"),
    (DifficultyFilter, {"low": 0.9, "high": 0.1}, ValueError, r"DifficultyFilter needs low < high, got low=0.9, high=0.1"),
    (DifficultyFilter, {"low": 0.5, "high": 0.5}, ValueError, r"DifficultyFilter needs low < high"),
    (DifficultyFilter, {"high": 1.5}, ValueError, r"DifficultyFilter.high must be a finite number in \[0, 1\], got 1.5"),
])
def test_a_bad_value_names_the_option(cls, values, error, message):
    with pytest.raises(error, match=message):
        cls(**values)


def test_a_yaml_mapping_names_the_section_and_unknown_keys():
    assert from_mapping(GRPOConfig, {"loss_type": "dapo", "beta": 0.02}, "grpo").loss_type == "dapo"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epsilon'\] in grpo"):
        from_mapping(GRPOConfig, {"epsilon": 0.2}, "grpo")
    with pytest.raises(ValueError, match=r"grpo.beta must be a finite number >= 0, got -0.5"):
        from_mapping(GRPOConfig, {"beta": -0.5}, "grpo")


def test_the_functions_take_the_configs_vocabulary():
    for loss_type in LOSS_TYPES:
        aggregate(torch.ones(2, 3), torch.ones(2, 3), loss_type, max_completion_length=3)
    for std in STD_CONVENTIONS:
        for scale in SCALES:
            group_advantages(torch.tensor([[0.0, 1.0]]), std=std, scale=scale)
    with pytest.raises(ValueError, match=r"scale must be one of \('group', 'batch', 'none'\), got 'global'"):
        group_advantages(torch.tensor([[0.0, 1.0]]), scale="global")
