"""``make results``: run chapter notebooks headless and record their numbers.

    python -m nbutils.results --profile cpu [--chapters 01,07] [--archive OUT.tar.gz]

Each chapter's notebook ``book/NN_*.ipynb`` runs in its own process through
:mod:`nbutils.run`, training from scratch (a fresh checkpoint folder under ``runs/``; with
``--checkpoints DIR`` one folder, kept as it is, for all the chapters of the run and of later
runs, so that a chapter loads what an earlier one trained, as chapter 06 loads chapters 02,
03, 05 and 07), with its
output also written to ``runs/<profile>/<chapter>/log.txt``. Its ``report(...)`` numbers, wall
time, date, machine, torch version and commit are merged into ``results/<profile>.json`` (other
chapters are kept as they were), and the whole file is rendered as ``results/<profile>.md``.

On a GPU machine without Jupyter, one command measures chapters and packs everything the run
produced (results JSON and Markdown, every report, figure, log and timing; not the
checkpoints) into one archive, so that a tool which brings back only a few files loses
nothing::

    PYTHONPATH=. python -m nbutils.results --profile gpu --chapters 01,07 --archive $OUT/gpu.tar.gz

Back home, ``--merge gpu.tar.gz`` (or a results JSON) folds its chapters into ``results/``.
``--compare A.json B.json`` checks that two results files hold the same numbers (wall-clock
times, unit ``s``, are skipped): the test that a refactoring changed no behaviour.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from nbutils.runtime import PROFILES, git_commit, machine


def notebooks(book: Path, chapters: list[str] | None) -> dict[str, Path]:
    """Chapter number -> notebook path, for the chapters asked for (all when None)."""
    found = {p.name[:2]: p for p in sorted(book.glob("[0-9][0-9]_*.ipynb"))}
    if chapters is None:
        return found
    missing = [c for c in chapters if c not in found]
    if missing:
        raise SystemExit(
            f"no notebook for chapter(s) {', '.join(missing)} in {book}; "
            f"found {', '.join(found) or 'none'}"
        )
    return {c: found[c] for c in chapters}


def run_chapter(
    chapter: str,
    notebook: Path,
    profile: str,
    runs: Path,
    note: str | None = None,
    checkpoints: Path | None = None,
) -> dict:
    """Run one notebook in a fresh process; return its results entry (with ``note`` if given,
    e.g. how the machine was shared). ``checkpoints``: a folder shared with other chapters of
    the run, kept as it is; by default a fresh folder of the chapter's own, so that the wall
    time includes training."""
    out = runs / profile / chapter
    if checkpoints is None:
        checkpoints = out / "checkpoints"
        shutil.rmtree(checkpoints, ignore_errors=True)
    env = {**os.environ, "NBUTILS_CKPT": str(checkpoints.resolve())}
    cmd = [sys.executable, "-m", "nbutils.run", str(notebook), "--profile", profile]
    started = time.perf_counter()
    code = _run_logged([*cmd, "--out", str(out)], env, out / "log.txt")
    seconds = round(time.perf_counter() - started, 1)
    report_file = out / f"report_{chapter}.json"
    entry = {
        "notebook": notebook.as_posix(),
        "status": "ok" if code == 0 else "failed",
        "wall_seconds": seconds,
        "commit": git_commit(notebook.parent),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "metrics": {},
    }
    if note:
        entry["note"] = note
    if code == 0 and report_file.exists():
        entry["metrics"] = json.loads(report_file.read_text())["metrics"]
    elif code == 0:
        entry["status"] = "no report"
    return entry


def _run_logged(cmd: list[str], env: dict, log: Path) -> int:
    """Run ``cmd``, copying its merged stdout and stderr to the terminal and to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            f.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        return proc.wait()


def write_archive(archive: Path, profile: str, results_dir: Path, runs: Path) -> Path:
    """Pack ``results/<profile>.{json,md}`` and ``runs/<profile>/`` (without checkpoints) into
    one ``.tar.gz``; members keep their paths relative to the folders' parent."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in (results_dir / f"{profile}.json", results_dir / f"{profile}.md"):
            if path.exists():
                tar.add(path, arcname=f"results/{path.name}")
        folder = runs / profile
        if folder.exists():
            tar.add(
                folder,
                arcname=f"runs/{profile}",
                filter=lambda m: None if _is_checkpoints(m.name) else m,
            )
    print(f"packed the results and every run output into {archive}")
    return archive


def _is_checkpoints(name: str) -> bool:
    """A checkpoint, or a folder of them (never packed: large, and rebuilt by a run)."""
    path = Path(name)
    return path.suffix == ".pt" or any(part.endswith("checkpoints") for part in path.parts)


def _read_results(source: Path, profile: str) -> dict:
    """A results JSON, or the ``results/<profile>.json`` inside a :func:`write_archive` file."""
    if source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as tar:
            try:
                member = tar.extractfile(f"results/{profile}.json")
            except KeyError:
                member = None
            if member is None:
                raise SystemExit(f"{source} holds no results/{profile}.json")
            return json.load(io.TextIOWrapper(member, encoding="utf-8"))
    return json.loads(source.read_text())


def compare(a: dict, b: dict) -> list[str]:
    """The differences between two results files: chapters or metrics present in one only,
    and values that differ (the numbers; wording of sources and notes may change); metrics
    in seconds (wall-clock times) are skipped."""
    diffs = []
    for chapter in sorted(set(a["chapters"]) | set(b["chapters"])):
        ma = a["chapters"].get(chapter, {}).get("metrics")
        mb = b["chapters"].get(chapter, {}).get("metrics")
        if ma is None or mb is None:
            diffs.append(
                f"chapter {chapter}: only in {'the first' if mb is None else 'the second'}"
            )
            continue
        for name in sorted(set(ma) | set(mb)):
            va, vb = ma.get(name), mb.get(name)
            if va is None or vb is None:
                diffs.append(
                    f"{chapter} {name!r}: only in {'the first' if vb is None else 'the second'}"
                )
            elif "s" not in (va.get("unit"), vb.get("unit")) and va["value"] != vb["value"]:
                diffs.append(f"{chapter} {name!r}: {va.get('value')!r} != {vb.get('value')!r}")
    return diffs


def _compare_files(first: Path, second: Path) -> int:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    diffs = compare(a, b)
    counted = sum(len(e.get("metrics", {})) for e in b["chapters"].values())
    if diffs:
        print(f"{len(diffs)} difference(s) between {first} and {second}:")
        print("\n".join(f"  {d}" for d in diffs))
        return 1
    print(f"identical: {counted} metrics of {len(b['chapters'])} chapters (times in s skipped)")
    return 0


def render_markdown(results: dict) -> str:
    """The results file as Markdown tables, one per chapter."""
    lines = [
        f"# Measured results, `{results['profile']}` profile",
        "",
        "Written by `make results`; every number comes from running the chapter's notebook.",
        "",
    ]
    for chapter, entry in sorted(results["chapters"].items()):
        m = entry["machine"]
        where = m.get("gpu") or f"{m.get('cpus')} CPU cores"
        lines += [
            f"## Chapter {chapter} ({entry['notebook']})",
            "",
            f"{entry['status']}; {entry['wall_seconds']:.0f} s on {where}, "
            f"torch {m.get('torch')}, commit {entry['commit']}, {entry['date']}",
            "",
        ]
        if entry.get("note"):
            lines += [f"Note: {entry['note']}", ""]
        lines += [
            "| metric | ours | unit | paper | source | note |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in entry["metrics"].items():
            keys = ("value", "unit", "paper", "source", "note")
            cells = [name, *(v.get(k) for k in keys)]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def merge(sources: list[Path], path: Path, profile: str) -> int:
    """Copy the chapter entries of other results files of the same profile into ``path``."""
    results = (
        json.loads(path.read_text()) if path.exists() else {"profile": profile, "chapters": {}}
    )
    for source in sources:
        other = _read_results(source, profile)
        if other.get("profile") != profile:
            raise SystemExit(
                f"{source} holds the {other.get('profile')!r} profile, not {profile!r}"
            )
        results["chapters"].update(other["chapters"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(render_markdown(results))
    print(f"merged {len(sources)} file(s) into {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbutils.results")
    parser.add_argument("--profile", choices=PROFILES, help="required unless --compare")
    parser.add_argument("--chapters", help="comma-separated chapter numbers, e.g. 01,07")
    parser.add_argument("--book", type=Path, default=Path("book"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="instead of running notebooks, merge the chapters of these results files or "
        "archives (e.g. measured on another machine)",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        metavar="TAR_GZ",
        help="after the run, pack results and every run output (no checkpoints) into this file",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar="JSON",
        help="only compare two results files (times in s skipped); exit 1 if they differ",
    )
    parser.add_argument("--note", help="a remark stored with each chapter's entry")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        metavar="DIR",
        help="one checkpoint folder for every chapter of the run, in the order given, kept as "
        "it is: a chapter reuses the models an earlier chapter (of this run or an earlier one) "
        "trained there, and its wall time excludes that training (the entry's note says so)",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="only rewrite, from results/*.json, the results table of README.md and the "
        "measured numbers in the notebooks' markdown (their exercises' answers)",
    )
    args = parser.parse_args(argv)
    if args.compare:
        return _compare_files(*args.compare)
    if args.readme:
        from nbutils.measured import MissingResult, fill_notebook, update_readme

        root = args.results.resolve().parent
        try:
            changed = update_readme(root)
            print("README.md results table " + ("rewritten" if changed else "already up to date"))
            for notebook in sorted(args.book.glob("*.ipynb")):
                if fill_notebook(root, notebook):
                    print(f"{notebook}: measured numbers rewritten")
        except MissingResult as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    if args.profile is None:
        parser.error("--profile is required (unless --compare)")
    if args.merge:
        return merge(args.merge, args.results / f"{args.profile}.json", args.profile)
    chapters = [c.strip().zfill(2) for c in args.chapters.split(",")] if args.chapters else None
    path = args.results / f"{args.profile}.json"
    results = (
        json.loads(path.read_text()) if path.exists() else {"profile": args.profile, "chapters": {}}
    )
    failed, note = [], args.note
    if args.checkpoints is not None:
        args.checkpoints.mkdir(parents=True, exist_ok=True)
        shared = (
            f"checkpoints in the shared folder {args.checkpoints.name}/: models found there "
            "(trained by earlier chapters) were loaded, not trained in this wall time"
        )
        note = f"{note}; {shared}" if note else shared
    for chapter, notebook in notebooks(args.book, chapters).items():  # in the order given
        entry = run_chapter(chapter, notebook, args.profile, args.runs, note, args.checkpoints)
        if entry["status"] != "ok":
            failed.append(chapter)
        results["chapters"][chapter] = entry
        args.results.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        path.with_suffix(".md").write_text(render_markdown(results))
    print(f"wrote {path} and {path.with_suffix('.md')}" + (f"; FAILED: {failed}" if failed else ""))
    if args.archive:
        write_archive(args.archive, args.profile, args.results, args.runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
