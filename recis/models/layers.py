"""Dense building blocks of the CTR models: MLP, FM, dot interaction, cross layers, target attention."""
from typing import Optional, Sequence

import torch
from torch import nn

from recis.config_utils import Range, check_value

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "prelu": nn.PReLU}


class MLP(nn.Sequential):
    """Linear + activation (+ dropout) per hidden width, then an optional linear output.

    >>> MLP(8, [16, 4], out_dim=1)(torch.zeros(2, 8)).shape
    torch.Size([2, 1])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: Optional[int] = None, activation: str = "relu",
                 dropout: float = 0.0):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        check_value("MLP dropout", dropout, float, Range(ge=0, lt=1))
        check_value("MLP hidden", list(hidden), Sequence[int], Range(ge=1))
        check_value("MLP out_dim", out_dim, Optional[int], Range(ge=1))
        layers, width = [], in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        super().__init__(*layers)
        self.out_dim = width


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """Second-order FM term of fields [B, F, D]: sum over pairs i<j of <e_i, e_j>, shape [B]."""
    square_of_sum = fields.sum(dim=1).pow(2)
    sum_of_square = fields.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


def dot_interaction(fields: torch.Tensor) -> torch.Tensor:
    """DLRM interaction: the dot products of every pair i<j of fields [B, F, D], shape [B, F(F-1)/2]."""
    n = fields.shape[1]
    gram = torch.bmm(fields, fields.transpose(1, 2))
    i, j = torch.triu_indices(n, n, offset=1, device=fields.device)
    return gram[:, i, j]


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, W full-rank or U_l V_l^T (low_rank)."""

    def __init__(self, dim: int, num_layers: int, low_rank: Optional[int] = None):
        super().__init__()
        check_value("CrossNetwork num_layers", num_layers, int, Range(ge=1))
        check_value("CrossNetwork low_rank", low_rank, Optional[int], Range(ge=1))
        if low_rank is None:
            self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim))
                                        for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class TargetAttention(nn.Module):
    """DIN's local activation unit: weights each behaviour by an MLP of (k, q, k - q, k * q) and
    sum-pools them (no softmax, as in the paper); padded positions get weight 0."""

    def __init__(self, dim: int, hidden: Sequence[int] = (80, 40), activation: str = "sigmoid"):
        super().__init__()
        self.score = MLP(4 * dim, hidden, out_dim=1, activation=activation)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query [B, D], keys [B, L, D], mask [B, L] (True = real behaviour) -> [B, D]."""
        q = query.unsqueeze(1).expand_as(keys)
        weights = self.score(torch.cat([keys, q, keys - q, keys * q], dim=-1)).squeeze(-1)
        weights = weights * mask.to(weights.dtype)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)


def jagged_to_padded(values: torch.Tensor, lengths: torch.Tensor, max_len: int):
    """Rows of a jagged [N, D] tensor into [B, max_len, D] (keeping the first max_len of each bag)
    plus the mask [B, max_len] of real positions."""
    batch = lengths.numel()
    offsets = torch.zeros(batch + 1, dtype=torch.long, device=lengths.device)
    torch.cumsum(lengths, 0, out=offsets[1:])
    pos = torch.arange(values.shape[0], device=values.device) - torch.repeat_interleave(offsets[:-1], lengths)
    bag = torch.repeat_interleave(torch.arange(batch, device=lengths.device), lengths)
    keep = pos < max_len
    padded = values.new_zeros((batch, max_len, values.shape[1]))
    padded[bag[keep], pos[keep]] = values[keep]
    mask = torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.clamp(max=max_len).unsqueeze(1)
    return padded, mask
