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
    layout :func:`icl.models.lsa_layer` computes in; its values and shape are the canonical ones. Z
    is a new tensor: it never shares memory with the inputs.
    """
    n, d = X.shape[-2:]
    batch = X.shape[:-2]
    if y.shape != (*batch, n) or x_query.shape != (*batch, d):
        raise ValueError(
            f"to_tokens needs X (..., n, d), y (..., n), x_query (..., d) with equal leading axes; got X "
            f"{tuple(X.shape)}, y {tuple(y.shape)}, x_query {tuple(x_query.shape)}"
        )
    source = _token_rows_view(X, y, x_query)
    if source is not None:  # the prompt already lies in token-row layout: one contiguous copy
        rows = source.clone(memory_format=torch.contiguous_format)
    else:
        dtype = torch.promote_types(torch.promote_types(X.dtype, y.dtype), x_query.dtype)
        rows = torch.empty(*batch, n + 1, d + 1, dtype=dtype, device=X.device)
        rows[..., :n, :d] = X
        rows[..., :n, d] = y
        rows[..., n, :d] = x_query
    rows[..., n, d] = 0  # the query's label slot: y_query never enters Z
    return rows.mT


def _token_rows_view(X: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor | None:
    """The (..., n+1, d+1) token rows that X, y and x_query are views of, or None if they are not.

    :func:`icl.tasks.sample_regression` writes each prompt as rows (x_iᵀ, y_i) of one array, the query
    last; copying that array whole is ~3× faster than gathering the three pieces. The query's label
    slot is read here too and is overwritten by the caller.
    """
    n, d = X.shape[-2:]
    if X.requires_grad or y.requires_grad or x_query.requires_grad:
        return None  # a view reaching past X would route y's and x_query's gradients to X
    if X.numel() == 0 or not (X.dtype == y.dtype == x_query.dtype and X.device == y.device == x_query.device):
        return None
    if len({t.untyped_storage().data_ptr() for t in (X, y, x_query)}) != 1:
        return None
    batch_strides = X.stride()[:-2]
    size = X.element_size()
    start = X.data_ptr()
    layout_matches = (
        X.stride()[-2:] == (d + 1, 1)
        and y.stride() == (*batch_strides, d + 1)
        and x_query.stride() == (*batch_strides, 1)
        and y.data_ptr() == start + d * size
        and x_query.data_ptr() == start + n * (d + 1) * size
    )
    if not layout_matches:
        return None
    shape, strides = (*X.shape[:-2], n + 1, d + 1), X.stride()
    # The query's label slot lies just past x_query's last element: it must still be inside the storage.
    last = X.storage_offset() + sum((s - 1) * t for s, t in zip(shape, strides, strict=True))
    if (last + 1) * size > X.untyped_storage().nbytes():
        return None
    return X.as_strided(shape, strides)


def read_out(Z: torch.Tensor) -> torch.Tensor:
    """ŷ = −Z[..., d, n], the query's label entry with the canonical minus sign. (..., d+1, n+1) -> (...)."""
    # Index through the row view: same entry, but the gradient is then laid out like to_tokens' Z.
    return -Z.mT[..., -1, -1]
