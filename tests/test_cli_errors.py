"""Every verb prints cpzarr's own errors as one line in the CLI's words, never a traceback."""

import pytest
from click.testing import CliRunner

from cpzarr.cli import main


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from cpzarr.cells import import_locations, write_cells
    from cpzarr.ingest import ingest
    from cpzarr.profiles import write_profiles
    from cpzarr.store import open_screen
    from cpzarr.synthetic import make_profiles, make_screen

    root = tmp_path_factory.mktemp("cli")
    screen = make_screen(root / "images", plates=1, batches=1, sites=1, image_size=64, cells_per_site=4,
                         moas=1, compounds_per_moa=1, dmso_wells=1, nucleus_radius=4)
    for name in ("bare.zarr", "located.zarr"):
        ingest(screen.load_data, root / name, platemap=screen.platemap, progress=False, scheduler="sync")
    write_cells(root / "located.zarr", import_locations(open_screen(root / "located.zarr"), screen.locations))
    profiles = make_profiles(n_plates=2, n_batches=1, n_negcon=4, n_compounds=4, n_replicates=2, n_moas=2,
                             n_features=6, n_samples=None, dtype="float64")
    write_profiles(profiles, root / "wells.csv")
    (root / "folder").mkdir()
    (root / "bad.yaml").write_text("input: {synthetic: {}}\ncrops: {boxx: 3}\n")
    return root


CASES = [
    (["info", "{folder}"], "is not a cpzarr screen store"),
    (["locate", "{folder}", "--from", "{images}/locations"], "is not a cpzarr screen store"),
    (["locate", "{located}", "--from", "{images}/platemap.csv"], "Image.csv must sit beside each Nuclei.csv"),
    (["profile", "{folder}"], "{folder} is not a cpzarr store; make one with `cpzarr ingest`"),
    (["profile", "{bare}"], "has no cells yet; run `cpzarr locate {bare} --from PATH` (or --detect) first"),
    (["profile", "{located}", "--weights", "{root}/nope.h5"], "--weights {root}/nope.h5: no such file"),
    (["profile", "{located}", "--model", "trained"], "--weights CHECKPOINT"),
    (["profiles", "normalize", "{wells}", "{root}/o.csv", "--by", "zzz"], "--by zzz: grouping coordinates"),
    (["profiles", "consensus", "{wells}", "{root}/o.csv", "--replicate-columns", "zz"],
     "--replicate-columns zz: grouping coordinates"),
    (["profiles", "normalize", "{located}", "{root}/o.csv"], "is a Zarr store: name the node of profiles with --node"),
    (["profiles", "spherize", "{located}", "{root}/o.csv", "--node", "profiles/x/y"], "cannot open node"),
    (["evaluate", "{wells}", "-g", "zz"], "zz"),
    (["train", "{root}/bad.yaml"], "crops.boxx: unknown key"),
]


@pytest.mark.parametrize("args, expected", CASES, ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_each_verb_error_is_one_line(stores, args, expected):
    names = {"root": stores, "folder": stores / "folder", "bare": stores / "bare.zarr",
             "located": stores / "located.zarr", "images": stores / "images", "wells": stores / "wells.csv"}
    result = CliRunner().invoke(main, [a.format(**names) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert expected.format(**names) in lines[0]
    assert "weights=" not in lines[0]  # Python's words


def test_ctrl_c_in_any_verb_is_one_line(monkeypatch, stores):
    import cpzarr.store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpzarr.store, "screen_info", interrupted)
    result = CliRunner().invoke(main, ["info", str(stores / "bare.zarr")])
    assert result.exit_code == 130
    assert result.output.strip() == "Interrupted; run the same command again to resume."
