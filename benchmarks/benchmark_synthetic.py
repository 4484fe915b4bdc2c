"""Benchmarks of the synthetic screen generator (cpzarr.synthetic)."""

import shutil
import tempfile
from pathlib import Path

from cpzarr.synthetic import make_screen
from cpzarr.synthetic._screen import render_site


class RenderSite:
    """One five-channel site in memory; 1080 x 1080 with about 230 cells is a LINCS site."""

    params = ([(256, 20), (1080, 230)],)
    param_names = ["size_cells"]

    def setup(self, size_cells):
        # Warm the pixel-grid cache and the page allocations of a first render.
        size, cells = size_cells
        render_site(image_size=size, cells_per_site=cells, seed=0)

    def time_render_site(self, size_cells):
        size, cells = size_cells
        render_site(image_size=size, cells_per_site=cells, seed=1)

    def peakmem_render_site(self, size_cells):
        size, cells = size_cells
        render_site(image_size=size, cells_per_site=cells, seed=1)


class MakeScreen:
    """The default screen (4 plates x 10 wells x 2 sites x 256^2 x 5 channels) written to disk."""

    timeout = 120

    def setup(self):
        self.folder = Path(tempfile.mkdtemp(prefix="cpzarr-bench-"))

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def time_make_screen(self):
        make_screen(self.folder / "screen", overwrite=True)

    def peakmem_make_screen(self):
        make_screen(self.folder / "screen", overwrite=True)
