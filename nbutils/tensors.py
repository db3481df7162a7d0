"""Small tensor helpers shared by every module: the one input check, ``append_dims`` and random
draws made on a generator's own device.

:func:`check_tensor` is the package's single guard for tensors that come from a user. It checks
type, dtype, shape (with named sizes that must agree across tensors) and, when asked, that the
values are finite or binary, and its error says what was expected and what came::

    >>> import torch
    >>> sizes = check_tensor(torch.zeros(8, 2), "x", shape=("B", 2))
    >>> sizes
    {'B': 8}
    >>> check_tensor(torch.zeros(3), "t", shape=("B",), sizes=sizes)
    Traceback (most recent call last):
    ...
    ValueError: t must have shape (B=8,), got (3,)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: A shape pattern entry: an exact size, a name (any size, the same wherever the name recurs),
#: or "*" as the last entry (one or more further dimensions of any size).
Dim = int | str


def _describe(shape: Sequence[Dim], sizes: dict[str, int]) -> str:
    parts = [f"{d}={sizes[d]}" if isinstance(d, str) and d in sizes else str(d) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _shape_matches(got: tuple[int, ...], shape: Sequence[Dim], sizes: dict[str, int]) -> bool:
    """Match ``got`` against the pattern, binding names in ``sizes`` (only on success)."""
    fixed = list(shape)
    rest = fixed[-1] == "*" if fixed else False
    if rest:
        fixed = fixed[:-1]
        if len(got) <= len(fixed):
            return False
    elif len(got) != len(fixed):
        return False
    bound = dict(sizes)
    for size, want in zip(got, fixed, strict=False):
        if isinstance(want, int):
            if size != want:
                return False
        elif bound.setdefault(want, size) != size:
            return False
    sizes.update(bound)
    return True


def check_tensor(
    x,
    name: str,
    *,
    shape: Sequence[Dim] | None = None,
    sizes: dict[str, int] | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    floating: bool = False,
    finite: bool = False,
    binary: bool = False,
    fix: str = "",
) -> dict[str, int]:
    """Raise a clear error unless ``x`` is a tensor of the expected kind; return the named sizes.

    Args:
        x: what the caller was given.
        name: how the error names it, e.g. ``"x"`` or ``"Compose: x"``.
        shape: a pattern such as ``("B", 1, 28, 28)`` or ``("B", "*")`` (see :data:`Dim`).
        sizes: names already bound (e.g. by an earlier call); updated in place and returned.
        dtype: the dtype (or dtypes) allowed.
        floating: require a floating-point dtype.
        finite: reject NaN and infinite values.
        binary: require every value to be 0 or 1.
        fix: a hint appended to value errors, e.g. how to binarize images.

    Returns:
        The sizes bound to the pattern's names, e.g. ``{"B": 8}``.

    Raises:
        TypeError: not a tensor, or the wrong dtype.
        ValueError: the wrong shape, or values that are not finite / not binary.
    """
    sizes = {} if sizes is None else sizes
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype or ())
    if allowed and x.dtype not in allowed:
        want = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{name} must have dtype {want}, got {x.dtype}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if shape is not None and not _shape_matches(tuple(x.shape), shape, sizes):
        raise ValueError(f"{name} must have shape {_describe(shape, sizes)}, got {tuple(x.shape)}")
    hint = f"; {fix}" if fix else ""
    if finite and x.numel() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite values{hint}")
    if binary:
        off = (x != 0) & (x != 1)
        if off.any():
            raise ValueError(
                f"{name} must be binary (values 0 and 1 only), got {int(off.sum())} other "
                f"values, e.g. {x[off][0].item():.4g} (range [{x.min().item():.4g}, "
                f"{x.max().item():.4g}]){hint}"
            )
    return sizes


def check_like(out, x: torch.Tensor, name: str, what: str):
    """Return ``out``, a network's output, if it is a tensor of the shape of its input ``x``
    (a velocity, a score, a noise prediction); else a clear error naming both shapes."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{name} returned {got} for x of shape {tuple(x.shape)}; {what} must have the shape "
            "of its input"
        )
    return out


def check_count(n, name: str = "n") -> int:
    """A positive number of things (samples, steps): a plain int >= 1, returned as int.

    Example:
        >>> check_count(3)
        3
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def check_dtype_matches(x: torch.Tensor, module: torch.nn.Module, name: str = "x") -> None:
    """Raise a clear error when a floating input's dtype differs from a model's parameters'."""
    ref = next(module.parameters(), None)
    if ref is not None and x.is_floating_point() and x.dtype != ref.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {type(module).__name__} computes in {ref.dtype}; "
            f"convert one of them (x.to({ref.dtype}) or model.to({x.dtype}))"
        )


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions: t (B,) -> (B, 1, ..., 1) with ``ndim`` dims in all.

    Example:
        >>> append_dims(torch.ones(3), 4).shape
        torch.Size([3, 1, 1, 1])
    """
    if t.dim() > ndim:
        raise ValueError(f"cannot expand a tensor of {t.dim()} dims to {ndim} dims")
    return t.reshape(*t.shape, *([1] * (ndim - t.dim())))


def generator_device(generator: torch.Generator | None, default=None):
    """Where a draw with ``generator`` must be made: the generator's device, else ``default``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__} "
            "(e.g. torch.Generator().manual_seed(0))"
        )
    return generator.device if generator is not None else default


def draw(
    kind: Callable,
    shape,
    *,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A random tensor from ``kind`` (``torch.rand`` or ``torch.randn``) made with ``generator``.

    The draw happens on the generator's device (a CPU generator can seed a CUDA run, with the
    same numbers on every machine) and the result then moves to ``device``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> draw(torch.rand, (2,), generator=g).shape
        torch.Size([2])
    """
    where = generator_device(generator, device)
    out = kind(shape, generator=generator, device=where, dtype=dtype)
    return out.to(device)
