"""``make results``: run chapter notebooks headless and record their numbers.

    python -m nbutils.results --profile cpu [--chapters 01,07]

Each chapter's notebook ``book/NN_*.ipynb`` runs in its own process through
:mod:`nbutils.run`, training from scratch (a fresh checkpoint folder under ``runs/``). Its
``report(...)`` numbers, wall time, date, machine, torch version and commit are merged into
``results/<profile>.json`` (other chapters are kept as they were), and the whole file is
rendered as ``results/<profile>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
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
    chapter: str, notebook: Path, profile: str, runs: Path, note: str | None = None
) -> dict:
    """Run one notebook in a fresh process; return its results entry (with ``note`` if given,
    e.g. how the machine was shared)."""
    out = runs / profile / chapter
    checkpoints = out / "checkpoints"  # fresh, so that the wall time includes training
    shutil.rmtree(checkpoints, ignore_errors=True)
    env = {**os.environ, "NBUTILS_CKPT": str(checkpoints.resolve())}
    cmd = [sys.executable, "-m", "nbutils.run", str(notebook), "--profile", profile]
    started = time.perf_counter()
    code = subprocess.run([*cmd, "--out", str(out)], env=env).returncode
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
        other = json.loads(source.read_text())
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
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--chapters", help="comma-separated chapter numbers, e.g. 01,07")
    parser.add_argument("--book", type=Path, default=Path("book"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="instead of running notebooks, merge the chapters of these "
        "results files (e.g. measured on another machine)",
    )
    parser.add_argument("--note", help="a remark stored with each chapter's entry")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.results / f"{args.profile}.json", args.profile)
    chapters = [c.strip().zfill(2) for c in args.chapters.split(",")] if args.chapters else None
    path = args.results / f"{args.profile}.json"
    results = (
        json.loads(path.read_text()) if path.exists() else {"profile": args.profile, "chapters": {}}
    )
    failed = []
    for chapter, notebook in notebooks(args.book, chapters).items():
        entry = run_chapter(chapter, notebook, args.profile, args.runs, args.note)
        if entry["status"] != "ok":
            failed.append(chapter)
        results["chapters"][chapter] = entry
        args.results.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        path.with_suffix(".md").write_text(render_markdown(results))
    print(f"wrote {path} and {path.with_suffix('.md')}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
