"""The study as a static site: the executed notebooks (``results/notebooks/``) rendered to
HTML with nbconvert, without re-executing them, code hidden (each page links its
notebook), figures embedded, and a contents page (``index.html``) in chapter order.

``make html`` runs ``python -m pan_utils.study.site --notebooks results/notebooks --out site``.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"
MARKER = ".pan-site"  # in every folder build_site writes: only such a folder is replaced
STYLE = """<style>
.pan-nav { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 12px auto;
  padding: 6px 16px; border-bottom: 1px solid #ddd; display: flex; gap: 24px; }
.pan-nav a { color: #0b5cad; text-decoration: none; }
</style>"""


class SiteError(Exception):
    """A site that cannot be built (no folder, no executed notebook): one line to say why."""


def chapters(notebooks_dir: str | Path) -> list[Path]:
    """The executed chapters ``NN_*.ipynb`` of ``notebooks_dir``, in chapter order."""
    d = Path(notebooks_dir)
    if not d.is_dir():
        raise SiteError(f"no folder {d}: run `make reproduce` first (it writes the executed "
                        "notebooks)")
    found = sorted(d.glob(CHAPTER_GLOB))
    if not found:
        raise SiteError(f"no executed notebook NN_*.ipynb in {d}")
    return found


def title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The chapter's title: the first Markdown heading of the notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return re.sub(r"[*_`]", "", line.lstrip("#").strip())
    return fallback


def reader_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as a reader sees it: no warnings or logs (stderr streams), no error
    outputs' tracebacks (a failed run is not published: see ``build_site``)."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    return nb


def _nav(pages: list[tuple[str, str]], i: int | None) -> str:
    links = ['<a href="index.html">Contents</a>']
    if i is not None:
        if i > 0:
            links.append(f'<a href="{pages[i - 1][0]}">&larr; {html.escape(pages[i - 1][1])}</a>')
        if i + 1 < len(pages):
            links.append(f'<a href="{pages[i + 1][0]}">{html.escape(pages[i + 1][1])} &rarr;</a>')
    return f'<nav class="pan-nav">{" ".join(links)}</nav>'


def render_chapter(nb: nbformat.NotebookNode, name: str, nav: str, code_link: str) -> str:
    """One chapter as a standalone HTML page: outputs only (the code is in ``code_link``),
    images embedded, a navigation bar on top."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    log, level = exporter.log, exporter.log.level
    log.setLevel(logging.ERROR)  # nbconvert warns of each image without alt text: we add it
    try:
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}})
    finally:
        log.setLevel(level)
    body = body.replace('alt="No description has been provided for this image"',
                        f'alt="a figure of {html.escape(name)}"')
    link = (f'<p class="pan-nav">The code of this chapter: <a href="{code_link}">'
            f'{html.escape(code_link.split("/")[-1])}</a> (the executed notebook)</p>')
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav + link, body, count=1) \
        .replace("</head>", STYLE + "</head>", 1)


def index_page(pages: list[tuple[str, str]], heading: str) -> str:
    """The contents page: one link per chapter, titled as the chapter."""
    items = "\n".join(f'<li><a href="{href}">{html.escape(t)}</a></li>' for href, t in pages)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(heading)}</title>{STYLE}<style>body {{ font: 16px/1.6 "
            f"system-ui, sans-serif; max-width: 800px; margin: 40px auto; padding: 0 16px; }}"
            f"</style></head>\n<body><h1>{html.escape(heading)}</h1>\n<p>A reproducible "
            f"study of the claims of <em>Padding Aware Neurons</em> (Garcia-Gasulla, "
            f"Gimenez-Abalos, Martin-Torres, ICCV 2023 Workshops, "
            f"<a href=\"https://arxiv.org/abs/2309.08048\">arXiv:2309.08048</a>). Each "
            f"chapter is an executed notebook; its code is linked at its top.</p>\n"
            f"<ol>\n{items}\n</ol>\n</body></html>\n")


def build_site(notebooks_dir: str | Path, out_dir: str | Path,
               heading: str = "Padding Aware Neurons: the study") -> Path:
    """Render every chapter of ``notebooks_dir`` and the contents page into ``out_dir``,
    replacing it whole only once every page is built. Returns ``out_dir/index.html``.

    A notebook with an error output (a failed run) stops the build: a published page
    must not show a traceback."""
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / MARKER).exists())):
        raise SiteError(f"{out} exists and is not a site built here: choose another --out")
    srcs = chapters(notebooks_dir)
    nbs = [nbformat.read(p, as_version=4) for p in srcs]
    for p, nb in zip(srcs, nbs):
        if any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", [])):
            raise SiteError(f"{p} holds an error output (a failed run): rerun it first")
    pages = [(f"{p.stem}.html", title(nb, p.stem)) for p, nb in zip(srcs, nbs)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a site is meant to be read
        (tmp / MARKER).write_text("built by pan_utils.study.site\n")
        (tmp / "notebooks").mkdir()
        for i, (p, nb) in enumerate(zip(srcs, nbs)):
            shutil.copy2(p, tmp / "notebooks" / p.name)
            page = render_chapter(reader_copy(nb), pages[i][1], _nav(pages, i),
                                  f"notebooks/{p.name}")
            (tmp / pages[i][0]).write_text(page, encoding="utf-8")
        (tmp / "index.html").write_text(index_page(pages, heading), encoding="utf-8")
        old = out.with_name(f".tmp-{out.name}-old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pan_utils.study.site",
                                     description="Build the static site of the study from "
                                     "executed notebooks (no re-execution).")
    parser.add_argument("--notebooks", default="results/notebooks",
                        help="folder of executed NN_*.ipynb (default: results/notebooks)")
    parser.add_argument("--out", default="site", help="output folder (default: site)")
    args = parser.parse_args(argv)
    try:
        index = build_site(args.notebooks, args.out)
    except (SiteError, OSError, nbformat.ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {index} ({len(chapters(args.notebooks))} chapters): open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
