"""What older PyTorch releases lack, with a plain fallback for each.

The package declares the oldest PyTorch that its test suite has passed on (``pyproject.toml``; the README's
"Tested versions"). Each name here is the newer API where this PyTorch has it, and its older equivalent where it
does not, so that the rest of the package imports one name on every release and reads as if written for the newest.
"""

from collections.abc import Callable

import torch

__all__ = ["is_dynamo_compiling"]


def _older_is_dynamo_compiling() -> Callable[[], bool]:
    """Return PyTorch < 2.3's ``torch._dynamo.is_compiling``, itself: dynamo folds that very function to ``True``.

    A wrapper would work too (dynamo inlines it), but would cost a call more on every update that is not compiled.
    """
    import torch._dynamo  # imported only where it is needed: torch < 2.3

    return torch._dynamo.is_compiling


is_dynamo_compiling: Callable[[], bool] = (
    torch.compiler.is_dynamo_compiling
    if hasattr(torch.compiler, "is_dynamo_compiling")
    else _older_is_dynamo_compiling()
)
"""Whether dynamo (``torch.compile``) is tracing the caller: ``torch.compiler.is_dynamo_compiling`` (PyTorch 2.3).

PyTorch 2.1 and 2.2 lack it; there ``torch._dynamo.is_compiling`` answers the same question, and dynamo folds it
to a constant while tracing, as it does the newer function.
"""
