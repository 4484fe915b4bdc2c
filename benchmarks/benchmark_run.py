"""End-to-end: the demo pipeline, stage by stage (``cpzarr run`` on the demo config).

``time_stage`` re-runs one stage on a store prepared once in ``setup_cache`` (the stages before
it done), so the figures add up to the demo's wall time per stage; the ingest stage is timed on
a fresh store each time.
"""

import shutil
import tempfile
from importlib.resources import files
from pathlib import Path


def _config(root, **overrides):
    from cpzarr.config import load_config

    items = [f"output.store={Path(root) / 'screen.zarr'}", f"output.report={Path(root) / 'report'}"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(text=files("cpzarr").joinpath("demo.yaml").read_text(), overrides=items)


def _prepared():
    from cpzarr.run import run

    root = tempfile.mkdtemp(prefix="cpzarr-bench-demo-")
    run(_config(root), progress=False, echo=None)
    return root


class DemoStages:
    """The demo config's stages on its synthetic screen (4 plates, 96 wells, ~3,000 cells)."""

    timeout = 900
    number = 1
    repeat = 1
    params = ["locate", "features", "profiles", "evaluate", "report"]
    param_names = ["stage"]

    def setup_cache(self):
        return _prepared()

    def time_stage(self, root, stage):
        from cpzarr.run import run

        run(_config(root), start=stage, until=stage, progress=False, echo=None)


class DemoIngest:
    """The demo's ingest stage (synthetic images → Zarr store) on a fresh store."""

    timeout = 600
    number = 1
    repeat = 1

    def setup(self):
        self.root = tempfile.mkdtemp(prefix="cpzarr-bench-ingest-")

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def time_ingest(self):
        from cpzarr.run import run

        run(_config(self.root), until="ingest", progress=False, echo=None)
