"""Pictures for the notebooks; the only module of the package that imports matplotlib.

Every function draws into an ``ax`` you pass (or a new figure) and returns the axes, so
panels compose with :func:`subplots`. Images may be uint8 or float in [0, 1], shaped
(N, 1, H, W) or (N, H, W); points are (N, 2); trajectories are (T, N, 2).

:func:`frame_slider` turns precomputed frames into a slider that works in the static HTML
book (plain HTML and JavaScript, no kernel); :func:`live_slider` is the ipywidgets version for
a running kernel.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import uuid

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import torch

plt.rcParams.update(
    {
        "figure.dpi": 90,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
        "legend.fontsize": 8,
    }
)


def subplots(nrows: int = 1, ncols: int = 1, size: float = 3.0, **kwargs):
    """A figure of ``nrows x ncols`` panels of about ``size`` inches each: (fig, axes)."""
    kwargs.setdefault("figsize", (size * ncols, size * nrows))
    kwargs.setdefault("constrained_layout", True)
    return plt.subplots(nrows, ncols, **kwargs)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype != torch.uint8 else x
        x = x.numpy()
    return np.asarray(x)


def tile(images, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images (N, [1,] H, W) into one array (rows*H + gaps, cols*W + gaps) in [0, 1]."""
    x = _numpy(images)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel (N, 1, H, W), got {x.shape}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images (N, [1,] H, W), got shape {x.shape}")
    x = x / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    n, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), 0.25)  # light grey gaps
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = x[i]
    return np.clip(canvas, 0.0, 1.0)


def image_grid(images, nrow: int | None = None, ax=None, title: str | None = None, pad: int = 1):
    """Show images (N, [1,] H, W) as a grid with ``nrow`` images per row (ink is dark)."""
    ax = ax if ax is not None else subplots(size=4.0)[1]
    ax.imshow(tile(images, nrow, pad), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def scatter2d(
    points,
    ax=None,
    title: str | None = None,
    lim: float | None = None,
    s: float = 2,
    alpha: float = 0.5,
    **kwargs,
):
    """Scatter 2D points (N, 2); ``lim`` sets a square window [-lim, lim]^2."""
    p = _numpy(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {p.shape}")
    ax = ax if ax is not None else subplots()[1]
    ax.scatter(p[:, 0], p[:, 1], s=s, alpha=alpha, linewidths=0, **kwargs)
    _square(ax, lim, title)
    return ax


def _square(ax, lim, title):
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)


def grid2d(lim: float = 3.0, n: int = 200) -> tuple[torch.Tensor, float]:
    """A square grid over [-lim, lim]^2: points (n*n, 2) in row-major order and the cell area."""
    axis = torch.linspace(-lim, lim, n)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), float((axis[1] - axis[0]) ** 2)


@torch.no_grad()
def density2d(log_prob, ax=None, lim: float = 3.0, n: int = 200, title: str | None = None):
    """Heat map of ``exp(log_prob(points))`` on a grid; log_prob maps (M, 2) -> (M,)."""
    points, _ = grid2d(lim, n)
    values = torch.exp(log_prob(points)).reshape(n, n)
    ax = ax if ax is not None else subplots()[1]
    ax.imshow(_numpy(values), extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
    _square(ax, None, title)
    return ax


def curves(
    series: dict,
    ax=None,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
    logy: bool = False,
    smooth: int | None = None,
):
    """Plot named sequences (e.g. training losses, value k at step k + 1) against the step.

    ``smooth`` averages over a window of that many values, each drawn at the window's last
    step, so a smoothed curve lines up with points plotted at true step numbers.
    """
    ax = ax if ax is not None else subplots(size=4.0)[1]
    for name, values in series.items():
        y = _numpy(values).astype(np.float64)
        x = np.arange(1, len(y) + 1)
        if smooth and len(y) > smooth:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = x[smooth - 1 :]
        ax.plot(x, y, label=name, lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax


def trajectories2d(
    paths, ax=None, title: str | None = None, lim: float | None = None, max_paths: int = 200
):
    """Draw 2D trajectories (T, N, 2): grey lines, start (t = 1, noise) and end (t = 0) dots."""
    p = _numpy(paths)
    if p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"paths must have shape (T, N, 2), got {p.shape}")
    p = p[:, :max_paths]
    ax = ax if ax is not None else subplots()[1]
    ax.plot(p[:, :, 0], p[:, :, 1], color="0.5", lw=0.5, alpha=0.6)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=4, color="tab:blue", label="start", zorder=3)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=4, color="tab:red", label="end", zorder=3)
    ax.legend(loc="upper right")
    _square(ax, lim, title)
    return ax


# ----------------------------------------------------------------------------- sliders


def _png(frame, dpi: int = 90) -> bytes:
    """A matplotlib Figure (closed afterwards) or an image array (H, W[, C]) -> PNG bytes."""
    buffer = io.BytesIO()
    if isinstance(frame, matplotlib.figure.Figure):
        frame.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(frame)
    else:
        array = _numpy(frame)
        array = array / 255.0 if array.dtype == np.uint8 else np.clip(array, 0, 1)
        plt.imsave(buffer, array, cmap="gray_r", vmin=0, vmax=1, format="png")
    return buffer.getvalue()


class FrameSlider:
    """Precomputed frames behind an HTML range input; works in a static page (no kernel)."""

    def __init__(
        self,
        frames: list,
        labels: list[str] | None = None,
        title: str = "",
        width: int | None = None,
    ):
        if not frames:
            raise ValueError("frame_slider needs at least one frame")
        labels = [str(x) for x in (labels or range(len(frames)))]
        if len(labels) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(labels)} labels")
        self.pngs = [_png(f) for f in frames]
        self.labels, self.title, self.width = labels, title, width

    def _repr_html_(self) -> str:
        uid = "slider-" + uuid.uuid4().hex[:10]
        sources = [f"data:image/png;base64,{base64.b64encode(p).decode()}" for p in self.pngs]
        style = f' style="width:{self.width}px"' if self.width else ""
        last = len(sources) - 1
        return (
            f'<div class="nbutils-slider" id="{uid}">'
            f"<div><b>{html.escape(self.title)}</b></div>"
            f'<input type="range" min="0" max="{last}" value="0" step="1" '
            f'aria-label="{html.escape(self.title or "frame")}"> '
            f'<span class="nbutils-slider-label">{html.escape(self.labels[0])}</span><br>'
            f'<img alt="{html.escape(self.title or "frame")}" src="{sources[0]}"{style}>'
            f"<script>(function(){{var root=document.getElementById('{uid}');"
            f"var src={json.dumps(sources)};var lab={json.dumps(self.labels)};"
            "var input=root.querySelector('input'),img=root.querySelector('img'),"
            "text=root.querySelector('.nbutils-slider-label');"
            "input.addEventListener('input',function(){var i=+input.value;"
            "img.src=src[i];text.textContent=lab[i];});})();</script></div>"
        )

    def __repr__(self) -> str:
        return f"FrameSlider({len(self.pngs)} frames: {', '.join(self.labels)})"


def frame_slider(
    frames: list, labels: list[str] | None = None, title: str = "", width: int | None = None
) -> FrameSlider:
    """A slider over precomputed frames (Figures or image arrays) for the static HTML book.

    Figures passed in are rendered to PNG and closed. Display the result (last line of a cell).
    """
    return FrameSlider(frames, labels, title, width)


def live_slider(frames: list, labels: list[str] | None = None, description: str = "frame"):
    """The same frames behind an ipywidgets slider, for a running kernel (needs ipywidgets).

    The slider is linked to the image stack in the browser (``jslink``), so it also works in
    a saved notebook with its widget state.
    """
    import ipywidgets as widgets

    pngs = [_png(f) for f in frames]
    stack = widgets.Stack([widgets.Image(value=p, format="png") for p in pngs], selected_index=0)
    slider = widgets.IntSlider(value=0, min=0, max=len(pngs) - 1, description=description)
    widgets.jslink((slider, "value"), (stack, "selected_index"))
    caption = widgets.HTML(", ".join(f"{i}: {x}" for i, x in enumerate(labels or [])))
    return widgets.VBox([slider, caption, stack])
