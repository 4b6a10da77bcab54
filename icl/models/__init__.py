"""The book's models: linear self-attention transformers in the canonical form (:mod:`icl.models.linear`) and a small
GPT-2-style softmax transformer on interleaved tokens (:mod:`icl.models.softmax`), and an LSTM on the same tokens
(:mod:`icl.models.recurrent`)."""

from icl.models.linear import (
    PARAMETERISATIONS,
    LinearTransformer,
    Parameterisation,
    add_balanced_initialisation_,
    balanced_one_layer,
    lsa_layer,
)
from icl.models.recurrent import LSTMRegressor
from icl.models.softmax import SoftmaxTransformer, all_prefix_loss

__all__ = [
    "PARAMETERISATIONS",
    "LSTMRegressor",
    "LinearTransformer",
    "Parameterisation",
    "SoftmaxTransformer",
    "add_balanced_initialisation_",
    "balanced_one_layer",
    "all_prefix_loss",
    "lsa_layer",
]
