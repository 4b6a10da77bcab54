"""Device names resolve to a torch.device or fail early with a message naming the device."""

from __future__ import annotations

import doctest

import pytest
import torch

from icl import device
from icl.device import resolve_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:x", "cuda:", "mps", "", "cuda:0:1"])
def test_unknown_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'"):
        resolve_device(name)


@pytest.mark.parametrize("value", [0, None, 1.5])
def test_non_strings_are_rejected(value) -> None:
    with pytest.raises(ValueError, match="device must be"):
        resolve_device(value)


@no_gpu
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_fails_early(name: str) -> None:
    with pytest.raises(ValueError, match=f"device '{name}' was requested but no CUDA GPU is available"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_and_cuda_name_the_same_device() -> None:
    # One device, one string in the config, one result-store key, however the user asked for it.
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert str(resolve_device("auto")) == "cuda:0"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_out_of_range() -> None:
    count = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=f"only {count} CUDA GPU"):
        resolve_device(f"cuda:{count}")


def test_docstring_examples() -> None:
    result = doctest.testmod(device, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
