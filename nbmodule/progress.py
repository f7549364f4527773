"""One progress bar per stage (``tqdm.auto``), switchable by a ``progress`` parameter.

A nested bar per epoch bloats an executed notebook to hundreds of KB of widget state; engines use one bar
and ``set_postfix`` instead. ``TQDM_DISABLE`` does not silence ``tqdm.notebook``, hence the explicit flag.
"""
from __future__ import annotations

from typing import Any, Iterable

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 enabled: bool = True, initial: int = 0, **kwargs: Any) -> tqdm:
    """A ``tqdm.auto`` bar, or a silent one when ``enabled`` is False."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, initial=initial,
                dynamic_ncols=True, mininterval=1.0, **kwargs)
