"""The book's repository address: read from ``_config.yml``, and moved in one command.

The address lives in one place, ``repository.url`` in ``_config.yml`` (the Colab links and the
repository button of the HTML book read it there). A notebook cannot read a file before the
package is installed, so each Colab set-up cell carries a copy of the address;
``tests/test_hygiene.py`` checks every copy against ``_config.yml``, and this tool rewrites
them all::

    python -m nbutils.repository                 # print the address
    python -m nbutils.repository set https://github.com/<org>/<repo>
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CONFIG_URL = re.compile(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)(\S+)", re.MULTILINE)
_GITHUB = re.compile(r"^https://github\.com/[\w.-]+/[\w.-]+$")


def address(root: Path = ROOT) -> str:
    """``repository.url`` of ``<root>/_config.yml``."""
    text = (root / "_config.yml").read_text()
    found = _CONFIG_URL.search(text)
    if found is None:
        raise ValueError(f"{root / '_config.yml'} has no repository.url")
    return found.group(2)


def set_address(url: str, root: Path = ROOT) -> list[Path]:
    """Write ``url`` into ``_config.yml`` and every notebook's Colab cell; return what changed."""
    url = url.strip().removesuffix("/").removesuffix(".git")
    if not _GITHUB.match(url):
        raise ValueError(f"expected a GitHub address https://github.com/<org>/<repo>, got {url!r}")
    config = root / "_config.yml"
    text = config.read_text()
    if _CONFIG_URL.search(text) is None:
        raise ValueError(f"{config} has no repository.url to replace")
    old = address(root)
    same = re.compile(re.escape(old) + r"(?![\w.-])")  # the address, not a longer one
    rewrites = {}  # path -> new text: all made first, then all written
    new = _CONFIG_URL.sub(lambda m: m.group(1) + url, text, count=1)
    if new != text:
        rewrites[config] = new
    for path in sorted((root / "book").glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        touched = False
        for cell in notebook["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and "google.colab" in source:
                replaced = same.sub(url, source)
                if replaced != source:
                    lines = replaced.split("\n")
                    cell["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]
                    touched = True
        if touched:
            rewrites[path] = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    for path, content in rewrites.items():
        path.write_text(content)
    changed = list(rewrites)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbutils.repository",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    setter = sub.add_parser("set", help="move the book to another GitHub address")
    setter.add_argument("url")
    args = parser.parse_args(argv)
    if args.command == "set":
        for path in set_address(args.url):
            print(f"rewrote {path.relative_to(ROOT)}")
    print(address())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
