"""The canonical token matrix and its read-out (Ahn et al. 2023, paper form; papers/README §1).

Z: (B, d+1, n+1). Tokens are columns: column i < n is (x_i; y_i) and the last column is the
query (x_q; 0): ``y_query`` never enters Z. The model's prediction is read from the label row
of the query column with a minus sign, ŷ = −Z[:, d, n], because the canonical sparse layer
writes −⟨w, x_q⟩ there (Lemma 1).
"""

from __future__ import annotations

import torch


def to_tokens(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Stack a prompt into Z. X: (..., n, d), y: (..., n), x_query: (..., d) -> Z: (..., d+1, n+1).

    Z is returned as the transpose of a contiguous (..., n+1, d+1) array of token rows, the memory
    layout :func:`icl.models.lsa_layer` computes in; its values and shape are the canonical ones.
    """
    covariates = torch.cat([X, x_query.unsqueeze(-2)], dim=-2)  # (..., n+1, d)
    labels = torch.cat([y, torch.zeros_like(y[..., :1])], dim=-1)  # the query's label slot is 0
    rows = torch.cat([covariates, labels.unsqueeze(-1)], dim=-1)  # (..., n+1, d+1)
    return rows.mT


def read_out(Z: torch.Tensor) -> torch.Tensor:
    """ŷ = −Z[..., d, n], the label entry of the query column with the canonical minus sign. (..., d+1, n+1) -> (...)."""
    # Index through the row view: same entry, but the gradient is then laid out like to_tokens' Z.
    return -Z.mT[..., -1, -1]
