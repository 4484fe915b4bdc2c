"""Fault injection against the cpzarr command line (issue 21): bad inputs, crafted files, code in
queries and checkpoints, a file-size cap standing in for a full disk, and SIGKILLs at random points
of an ingest. Prints the table "tried / clear error / handled / unclear / wrong / lost / code ran".

Every case runs the real ``cpzarr`` command (or a short Python call) in a subprocess on a tiny
synthetic screen, and is classified from what a user would see:

* **clear error** - it failed (exit code != 0) with a message, no traceback, naming what the case
  expects (the file, line, well, column, ...);
* **handled** - an input that is odd but valid was accepted and the result is right;
* **unclear** - it failed with a traceback or without naming the offender;
* **wrong** - it exited 0 on bad input, or gave a wrong result;
* **lost** - a file the user owns (sources, a folder of theirs) was changed or removed;
* **code ran** - a payload in a query or a pickle executed.

Usage::

    PYTHONPATH=$PWD python scripts/fault_injection.py                 # every case, 10 kills
    PYTHONPATH=$PWD python scripts/fault_injection.py --kills 50 --only kill

About 2-4 minutes on two loaded cores (each case starts a Python process). The fast regression
tests of the same faults are tests/test_faults.py, tests/test_query.py, and the checkpoint tests
in tests/test_lite0.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TINY = dict(plates=1, batches=1, sites=2, image_size=40, cells_per_site=3, moas=1, compounds_per_moa=1,
            doses=(1.0,), dmso_wells=1)
CLI = "import sys; from cpzarr.cli import main; sys.exit(main())"
EVIL_QUERY = "@pd.io.common.os.system('echo pwned > pwned.txt') == 0 or control == 'negcon'"


@dataclass
class Case:
    category: str
    name: str
    argv: list
    expect: str = "error"  # "error" or "ok"
    keywords: tuple = ()
    check: object = None  # callable(workdir) -> str or None (what is wrong)
    protect: tuple = ()  # paths (relative to workdir) the user owns
    limits: dict = field(default_factory=dict)  # resource limits of the subprocess


def digest(root: Path) -> dict:
    if not root.exists():
        return {}
    if root.is_file():
        return {str(root): hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(case: Case, work: Path, env: dict) -> tuple[str, str]:
    before = {p: digest(work / p) for p in case.protect}
    (work / "pwned.txt").unlink(missing_ok=True)  # cases share folders: only this case's payload counts

    def limit():
        for kind, value in case.limits.items():
            resource.setrlimit(kind, (value, value))

    argv = [sys.executable, "-c", CLI, *case.argv] if case.argv and case.argv[0] != "-c" else [sys.executable, *case.argv]
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600, preexec_fn=limit)
    out = proc.stdout + proc.stderr
    if (work / "pwned.txt").exists():
        return "code ran", out
    if any(digest(work / p) != d for p, d in before.items()):
        return "lost", out
    if case.expect == "error":
        if proc.returncode == 0:
            return "wrong", out
        if "Traceback" in out or not all(k in out for k in case.keywords):
            return "unclear", out
        return "clear error", out
    if proc.returncode != 0:
        return ("unclear" if "Traceback" in out else "wrong"), out
    problem = case.check(work) if case.check else None
    return ("wrong", out + f"\nCHECK: {problem}") if problem else ("handled", out)


# --- building the cases ----------------------------------------------------------------------


def fresh_screen(work: Path):
    from cpzarr.synthetic import make_screen

    return make_screen(work / "raw", **TINY)


def _edit_csv(path: Path, edit):
    frame = pd.read_csv(path)
    frame = edit(frame) if edit(frame) is not None else frame
    frame.to_csv(path, index=False)


def table_cases():
    """(name, table file, edit(frame) -> frame, keywords, expect)."""
    def at(col, row, value):
        def edit(f):
            f[col] = f[col].astype(object)
            f.loc[row, col] = value
            return f
        return edit

    def dup(f):
        return pd.concat([f, f.iloc[[1]]], ignore_index=True)

    def drop_site(f):
        return f.drop(columns="Metadata_Site")

    def header_only(f):
        return f.iloc[:0]

    jpg = lambda f: at("ER", 2, f.loc[2, "ER"].replace(".tif", ".jpg"))(f)  # noqa: E731
    space = lambda f: at("ER", 2, f.loc[2, "ER"] + " ")(f)  # noqa: E731
    return [
        ("index path .jpg", "index.csv", jpg, ("line 4", "ER", ".jpg"), "error"),
        ("index path trailing space", "index.csv", space, (), "ok"),
        ("compound typo in one row", "index.csv", at("Metadata_compound", 1, "cpd01_l"), ("P01/A01", "compound"), "error"),
        ("batch differs in one row", "index.csv", at("Metadata_batch", 1, "B9"), ("P01/A01", "batch"), "error"),
        ("blank broad_sample in one row", "index.csv", at("Metadata_broad_sample", 1, np.nan), ("P01/A01",), "error"),
        ("site 10^9", "load_data.csv", at("Metadata_Site", 3, 10**9), ("line 5", "site"), "error"),
        ("negative site", "load_data.csv", at("Metadata_Site", 3, -2), ("line 5", "negative"), "error"),
        ("fractional site", "load_data.csv", at("Metadata_Site", 3, 1.5), ("line 5",), "error"),
        ("empty site", "load_data.csv", at("Metadata_Site", 3, np.nan), ("line 5",), "error"),
        ("duplicate site row", "load_data.csv", dup, ("appears on several lines",), "error"),
        ("missing Metadata_Site column", "load_data.csv", drop_site, ("Metadata_Site",), "error"),
        ("header-only table", "load_data.csv", header_only, ("lists no sites",), "error"),
        ("missing image file", "load_data.csv", at("FileName_OrigDNA", 0, "gone.tif"), ("gone.tif", "does not exist"), "error"),
    ]


def build_cases(work_root: Path):
    cases = []
    # 1. image tables, each on a fresh tiny screen
    for name, table, edit, keywords, expect in table_cases():
        work = work_root / f"t{len(cases)}"
        screen = fresh_screen(work)
        _edit_csv(screen.root / table, edit)

        def check(w):
            import zarr

            group = zarr.open_group(w / "s.zarr", mode="r")
            return None if group["images"].shape[3] == 5 else f"{group['images'].shape[3]} channels"

        cases.append((work, Case("image table", name, ["ingest", f"raw/{table}", "s.zarr", "--no-progress",
                                                         "--scheduler", "sync"],
                                 expect, keywords, check if expect == "ok" else None, ("raw",),
                                 {resource.RLIMIT_AS: 6 * 2**30})))
    # 2. damaged files
    for name, damage, keywords in [
        ("truncated pixels, header intact", lambda p: p.write_bytes(p.read_bytes()[:-1000]), ("P01_A02_s2_RNA.tif", "re-run")),
        ("image replaced by text", lambda p: p.write_text("not a tiff"), ("P01_A02_s2_RNA.tif", "cannot be read")),
        ("empty image file", lambda p: p.write_bytes(b""), ("P01_A02_s2_RNA.tif",)),
        ("image of another shape", lambda p: __import__("tifffile").imwrite(p, np.zeros((41, 40), np.uint16)), ("P01_A02_s2_RNA.tif", "41 x 40")),
        ("image of another dtype", lambda p: __import__("tifffile").imwrite(p, np.zeros((40, 40), np.float32)), ("P01_A02_s2_RNA.tif", "float32")),
    ]:
        work = work_root / f"d{len(cases)}"
        screen = fresh_screen(work)
        damage(screen.root / "images" / "P01" / "P01_A02_s2_RNA.tif")
        cases.append((work, Case("image file", name, ["ingest", "raw/load_data.csv", "s.zarr", "--no-progress",
                                                       "--scheduler", "sync"], "error", keywords, None, ("raw",))))
    for name, content, keywords in [
        ("empty table file", b"", ("load_data.csv",)),
        ("binary table file", bytes(range(256)) * 8, ("load_data.csv",)),
    ]:
        work = work_root / f"b{len(cases)}"
        screen = fresh_screen(work)
        (screen.root / "load_data.csv").write_bytes(content)
        cases.append((work, Case("image table", name, ["ingest", "raw/load_data.csv", "s.zarr", "--no-progress"],
                                 "error", keywords, None, ("raw",))))
    # 3. platemaps
    for name, edit, keywords in [
        ("platemap lacks a well", lambda f: f[f.well != "A02"], ("A02", "not in the platemap")),
        ("platemap lists a well twice", lambda f: pd.concat([f, f.iloc[[0]]]), ("more than once",)),
        ("platemap without well column", lambda f: f.drop(columns="well"), ("no well column",)),
    ]:
        work = work_root / f"p{len(cases)}"
        screen = fresh_screen(work)
        _edit_csv(screen.platemap, edit)
        cases.append((work, Case("platemap", name, ["ingest", "raw/load_data.csv", "s.zarr", "--platemap",
                                                     "raw/platemap.csv", "--no-progress"], "error", keywords, None,
                                 ("raw",))))
    # 4. a full disk, approximated by a file-size cap (writes fail with EFBIG instead of ENOSPC)
    work = work_root / f"f{len(cases)}"
    fresh_screen(work)
    cases.append((work, Case("disk/memory", "file-size cap 20 kB during ingest",
                             ["ingest", "raw/load_data.csv", "s.zarr", "--no-progress", "--scheduler", "sync"],
                             "error", ("ingest", "re-run"), None, ("raw",), {resource.RLIMIT_FSIZE: 20_000})))
    # 5. profiles
    profiles_dir = work_root / "profiles"
    profiles_dir.mkdir()
    from cpzarr.synthetic import make_profiles

    p = make_profiles(n_plates=2, n_batches=1, n_negcon=4, n_compounds=3, n_replicates=2, n_moas=1,
                      n_features=6, n_samples=None)
    from cpzarr.profiles import to_pycytominer

    frame = to_pycytominer(p)
    frame.to_csv(profiles_dir / "ok.csv", index=False)
    typo = frame.copy()
    feature = [c for c in frame.columns if not c.startswith("Metadata_")][0]
    typo[feature] = typo[feature].astype(object)
    typo.loc[3, feature] = "abc"
    typo.to_csv(profiles_dir / "typo.csv", index=False)
    inf = frame.copy()
    inf.loc[inf["Metadata_control"] == "negcon", feature] = np.inf
    inf.to_csv(profiles_dir / "inf.csv", index=False)
    (profiles_dir / "empty.csv").write_bytes(b"")
    cases += [
        (profiles_dir, Case("profiles", "feature column with one non-numeric cell",
                            ["profiles", "normalize", "typo.csv", "o1.parquet"], "error", (feature, "row 3"), None,
                            ("ok.csv",))),
        (profiles_dir, Case("profiles", "+inf in negcon, standardize",
                            ["profiles", "normalize", "inf.csv", "o2.parquet", "--method", "standardize",
                             "--samples", "control == 'negcon'"], "error", (feature, "inf"))),
        (profiles_dir, Case("profiles", "+inf in negcon, spherize",
                            ["profiles", "spherize", "inf.csv", "o3.parquet"], "error", (feature, "inf"))),
        (profiles_dir, Case("profiles", "empty profile file", ["profiles", "normalize", "empty.csv", "o4.parquet"],
                            "error", ("empty.csv",))),
        (profiles_dir, Case("profiles", "unknown recipe", ["profiles", "pipeline", "ok.csv", "o5.parquet",
                                                           "--recipe", "nope"], "error", ("nope",))),
    ]
    # 6. code in queries and checkpoints
    for option, argv in [
        ("--samples", ["profiles", "normalize", "ok.csv", "q1.parquet", "--samples", EVIL_QUERY]),
        ("--samples (spherize)", ["profiles", "spherize", "ok.csv", "q2.parquet", "--samples", EVIL_QUERY]),
        ("--mask", ["evaluate", "ok.csv", "--groups", "moa", "--mask", EVIL_QUERY, "--no-plots", "--null-size", "10",
                    "--output", "ev"]),
        ("--samples attribute access", ["profiles", "normalize", "ok.csv", "q3.parquet", "--samples",
                                        "control.__class__ == 'x'"]),
        ("--samples call", ["profiles", "normalize", "ok.csv", "q4.parquet", "--samples",
                            "__import__('os').system('echo pwned > pwned.txt') == 0"]),
    ]:
        cases.append((profiles_dir, Case("code execution", f"query in {option}", argv, "error", ("query",))))
    ckpt = work_root / "ckpt"
    ckpt.mkdir()

    class Touch:
        def __reduce__(self):
            return (open, ("pwned.txt", "w"))

    for position in range(5):
        parts = [pickle.dumps(0x1950A86A20F9469CFC6C), pickle.dumps(1001), pickle.dumps({"little_endian": True}),
                 pickle.dumps({}), pickle.dumps([])]
        parts[position] = pickle.dumps(Touch(), protocol=2)
        (ckpt / f"evil{position}.pth").write_bytes(b"".join(parts))
        code = ("import sys\nfrom cpzarr.errors import WeightsError\nfrom cpzarr.features._lite0 import read_pth\n"
                f"try:\n    read_pth('evil{position}.pth')\nexcept WeightsError as e:\n"
                "    sys.exit(f'WeightsError: {e}')")
        cases.append((ckpt, Case("code execution", f"checkpoint pickle #{position + 1}", ["-c", code], "error",
                                 ("WeightsError", "refusing"))))
    # 7. a user's folder where a synthetic run writes its images
    user = work_root / "user"
    (user / "run-images" / "images").mkdir(parents=True)
    (user / "run-images" / "images" / "mine.tif").write_bytes(b"precious")
    (user / "run-images" / "index.csv").write_text("mine")
    (user / "run.yaml").write_text(
        "name: t\ninput: {synthetic: {plates: 1, batches: 1, sites: 1, image_size: 64, cells_per_site: 3, "
        "moas: 1, compounds_per_moa: 1, doses: [1.0], dmso_wells: 1}}\n"
        "cluster: {n_workers: 1, threads_per_worker: 1, processes: false}\n"
        "output: {store: run.zarr, report: report}\n")
    cases.append((user, Case("data loss", "synthetic run over a user's <stem>-images folder",
                             ["run", "run.yaml", "--until", "ingest", "--no-progress"], "error",
                             ("not written by cpzarr",), None, ("run-images",))))
    # 8. location files
    for name, content, keywords in [
        ("empty location CSV", b"", ("A01-1-Nuclei.csv", "empty")),
        ("binary location CSV", bytes(range(256)) * 4, ("A01-1-Nuclei.csv",)),
        ("non-numeric location", b"Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,2\nabc,3\n",
         ("A01-1-Nuclei.csv", "row 3")),
    ]:
        work = work_root / f"l{len(cases)}"
        screen = fresh_screen(work)
        case = Case("locations", name, ["locate", "s.zarr", "--from", "raw/locations"], "error", keywords, None,
                    ("raw/images",))
        case.setup = (screen, content)  # ingested and damaged by prepare_locations
        cases.append((work, case))
    return cases


def prepare_locations(cases, env):
    for work, case in cases:
        setup = getattr(case, "setup", None)
        if setup is None:
            continue
        screen, content = setup
        subprocess.run([sys.executable, "-c", CLI, "ingest", "raw/load_data.csv", "s.zarr", "--no-progress",
                        "--scheduler", "sync"], cwd=work, env=env, check=True, capture_output=True)
        (screen.root / "locations" / "P01" / "A01-1-Nuclei.csv").write_bytes(content)


# --- SIGKILL at random points of an ingest ---------------------------------------------------


def kill_cases(work_root: Path, env: dict, n: int, seed: int):
    """Kill ``cpzarr ingest`` at random times, re-run it, compare with an uninterrupted store."""
    import zarr

    from cpzarr.synthetic import make_screen

    root = work_root / "kill"
    make_screen(root / "raw", plates=2, batches=1, sites=3, image_size=256, cells_per_site=10)
    argv = [sys.executable, "-c", CLI, "ingest", "raw/load_data.csv", "ref.zarr", "--no-progress",
            "--scheduler", "threads", "--workers", "2"]
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=root, env=env, check=True, capture_output=True)
    duration = time.perf_counter() - t0
    reference = {name: np.asarray(a[...]) for name, a in zarr.open_group(root / "ref.zarr", mode="r").arrays()}
    rng = random.Random(seed)
    results = []
    for i in range(n):
        store = f"k{i}.zarr"
        delay = rng.uniform(0.2, duration)
        proc = subprocess.Popen([*argv[:5], store, *argv[6:]], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = subprocess.run([*argv[:5], store, *argv[6:]], cwd=root, env=env, capture_output=True, text=True)
        name = f"SIGKILL after {delay:.2f} s" + ("" if killed else " (had finished)")
        if again.returncode != 0:
            results.append(("kill", name, "unclear" if "Traceback" in again.stderr else "clear error",
                            again.stderr[-300:]))
            continue
        got = {k: np.asarray(a[...]) for k, a in zarr.open_group(root / store, mode="r").arrays()}
        differ = sorted(set(got) ^ set(reference)) + [
            k for k in reference if k in got and not np.array_equal(got[k], reference[k], equal_nan=got[k].dtype.kind == "f")]
        shards = [p.relative_to(root / "ref.zarr") for p in (root / "ref.zarr" / "images").rglob("*") if p.is_file()]
        differ += [str(p) for p in shards if (root / store / p).read_bytes() != (root / "ref.zarr" / p).read_bytes()]
        results.append(("kill", name, "wrong" if differ else "handled", f"differ: {differ[:5]}" if differ else ""))
        shutil.rmtree(root / store, ignore_errors=True)
    return results, duration


# --- main ------------------------------------------------------------------------------------


COLUMNS = ("clear error", "handled", "unclear", "wrong", "lost", "code ran")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of an ingest (0: none)")
    parser.add_argument("--only", default=None, help="run only categories containing this text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--verbose", action="store_true", help="print each case's output tail")
    args = parser.parse_args(argv)

    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    work_root = Path(tempfile.mkdtemp(prefix="cpzarr-faults-"))
    rows = []
    try:
        cases = [] if args.only == "kill" else build_cases(work_root)
        cases = [(w, c) for w, c in cases if args.only is None or args.only in c.category]
        prepare_locations(cases, env)
        for work, case in cases:
            outcome, out = run_case(case, work, env)
            rows.append((case.category, case.name, outcome, out))
            print(f"{outcome:12s} {case.category:15s} {case.name}", flush=True)
            if args.verbose or outcome not in ("clear error", "handled"):
                print("    " + "\n    ".join(out.strip().splitlines()[-6:]), flush=True)
        if args.kills and (args.only is None or "kill" in args.only):
            results, duration = kill_cases(work_root, env, args.kills, args.seed)
            print(f"(uninterrupted ingest: {duration:.1f} s)")
            for category, name, outcome, out in results:
                rows.append((category, name, outcome, out))
                print(f"{outcome:12s} {category:15s} {name}", flush=True)
                if outcome != "handled":
                    print("    " + out.strip()[-300:], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work_root, ignore_errors=True)
        else:
            print(f"work folder kept: {work_root}")

    table = pd.DataFrame([(c, o) for c, _, o, _ in rows], columns=["category", "outcome"])
    summary = pd.crosstab(table["category"], table["outcome"]).reindex(columns=COLUMNS, fill_value=0)
    summary.insert(0, "tried", summary.sum(axis=1))
    summary.loc["all"] = summary.sum()
    print()
    print(summary.to_markdown() if _has_tabulate() else summary.to_string())
    return 0 if summary.loc["all", ["unclear", "wrong", "lost", "code ran"]].sum() == 0 else 1


def _has_tabulate():
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
