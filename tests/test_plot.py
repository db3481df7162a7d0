import base64
import re

import numpy as np
import pytest
import torch

from nbutils import plot


def test_tile_places_every_image():
    images = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 1, 2, 2) / 10
    canvas = plot.tile(images, nrow=3, pad=1)
    assert canvas.shape == (2 * 2 + 1, 3 * 2 + 2)
    assert canvas[0, 0] == pytest.approx(0.0) and canvas[3, 6] == pytest.approx(0.5)
    assert plot.tile(torch.full((1, 28, 28), 255, dtype=torch.uint8)).max() == 1.0
    with pytest.raises(ValueError, match="one channel"):
        plot.tile(torch.zeros(2, 3, 4, 4))


def test_grid2d_cell_area_integrates_a_gaussian():
    points, area = plot.grid2d(lim=6.0, n=301)
    density = torch.exp(-0.5 * (points**2).sum(1)) / (2 * np.pi)
    assert (density.sum() * area).item() == pytest.approx(1.0, abs=1e-3)


def test_frame_slider_embeds_every_frame_and_a_working_script():
    frames = [np.full((8, 8), v) for v in (0.0, 0.5, 1.0)]
    slider = plot.frame_slider(frames, labels=["a", "b", "c"], title="demo")
    page = slider._repr_html_()
    assert page.count("data:image/png;base64,") == 1 + 3  # the first frame shown + the list
    assert 'type="range"' in page and 'max="2"' in page
    sources = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert all(base64.b64decode(s)[:8] == b"\x89PNG\r\n\x1a\n" for s in sources)
    with pytest.raises(ValueError, match="3 frames but 2 labels"):
        plot.frame_slider(frames, labels=["a", "b"])


def test_figures_in_a_slider_are_closed():
    import matplotlib.pyplot as plt

    fig, _ = plot.subplots()
    plot.frame_slider([fig])
    assert fig.number not in plt.get_fignums()


def test_point_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot.scatter2d(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(T, N, 2\)"):
        plot.trajectories2d(torch.zeros(5, 2))


def test_curves_draw_each_smoothed_value_at_its_window_end():
    ax = plot.curves({"loss": [1.0, 2.0, 3.0, 4.0, 5.0]}, smooth=2)
    x, y = ax.lines[0].get_data()
    assert list(x) == [2, 3, 4, 5] and list(y) == [1.5, 2.5, 3.5, 4.5]
    ax = plot.curves({"loss": [1.0, 2.0, 3.0]})
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3]  # value k belongs to step k + 1
