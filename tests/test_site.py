"""The static site (`make html`): built from executed notebooks without re-executing them,
every figure file shown as an image, a contents page linking each chapter by its title,
and nothing a reader should not see (tracebacks, figure or path reprs)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import nbformat
import pytest

from pan_utils.study import site
from pan_utils.study.site import MARKER, SiteError, build_site

NOISE = ("Traceback (most recent call last)", "<Figure size", "PosixPath(")


def visible_text(page: str) -> str:
    """The text a browser shows: tags, scripts and styles removed, entities decoded."""
    page = re.sub(r"(?is)<(script|style)\b.*?</\1>", "", page)
    return html.unescape(re.sub(r"(?s)<[^>]+>", " ", page))


def embedded_images(page: str) -> set[bytes]:
    return {base64.b64decode(re.sub(r"\s+", "", m)) for m in
            re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', page)}


def linked_images(page: str, root: Path) -> set[bytes]:
    srcs = re.findall(r'<img[^>]+src="(?!data:)([^"]+)"', page)
    return {(root / s).read_bytes() for s in srcs if (root / s).is_file()}


def check_site(index: Path, figures: Path, n_chapters: int) -> None:
    root = index.parent
    front = index.read_text()
    links = re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', front)
    assert len(links) == n_chapters, links
    pages = [root / href for href, _ in links]
    assert [p.name for p in pages] == sorted(p.name for p in pages), "chapters out of order"
    shown: set[bytes] = set()
    for (href, title), page_path in zip(links, pages):
        page = page_path.read_text()
        assert html.unescape(title) in visible_text(page), f"{href} lacks its title"
        text = visible_text(page)
        for noise in NOISE:
            assert noise not in text, f"{href} shows {noise!r}"
        assert "hl-ipython3" not in page, f"{href} shows its code"  # highlighted code input
        shown |= embedded_images(page) | linked_images(page, root)
    files = sorted(figures.glob("*.png"))
    assert files, "the run wrote no figure"
    missing = [f.name for f in files if f.read_bytes() not in shown]
    assert not missing, f"figures not shown on any page: {missing}"


def test_the_site_of_the_smoke_run_shows_every_figure_and_no_noise(smoke_results, tmp_path):
    index = build_site(smoke_results / "notebooks", tmp_path / "site")
    n = len(list((smoke_results / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    check_site(index, smoke_results / "figures", n)
    # each page links its executed notebook, copied beside it
    for nb in (smoke_results / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        assert (tmp_path / "site" / "notebooks" / nb.name).read_bytes() == nb.read_bytes()


def _png(tmp: Path, name: str, colour: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.imshow([[0, colour], [3, 0]], vmin=0, vmax=3)
    path = tmp / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _notebook(tmp: Path, name: str, heading: str, figure: Path | None, error: bool = False):
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("secret_code_line = 1")
    if figure is not None:
        code.outputs = [nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(figure.read_bytes()).decode(),
                                  "text/plain": "<Figure size 100x100 with 1 Axes>"})]
    code.outputs.append(nbformat.v4.new_output("stream", name="stderr",
                                               text="UserWarning: PosixPath('/x')\n"))
    if error:
        code.outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="bad",
                                                   traceback=["Traceback (most recent call last)"]))
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {heading}\n\nText."), code]
    path = tmp / "notebooks" / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_a_small_site_hides_code_and_stderr_and_orders_chapters(tmp_path):
    a = _png(tmp_path, "a", 1)
    b = _png(tmp_path, "b", 2)
    _notebook(tmp_path, "02_second", "Second *chapter*", b)
    _notebook(tmp_path, "01_first", "First chapter", a)
    index = build_site(tmp_path / "notebooks", tmp_path / "out")
    check_site(index, tmp_path / "figures", 2)
    front = index.read_text()
    assert front.index("01_first.html") < front.index("02_second.html")
    assert ">Second chapter<" in front  # the Markdown emphasis is not shown raw
    page = (tmp_path / "out" / "01_first.html").read_text()
    assert "secret_code_line" not in page
    assert "UserWarning" not in visible_text(page)
    assert 'href="02_second.html"' in page and 'href="notebooks/01_first.ipynb"' in page


def test_check_site_fails_when_a_figure_is_not_shown(tmp_path):
    a = _png(tmp_path, "a", 1)
    _png(tmp_path, "b", 2)  # written by the run, shown by no notebook
    _notebook(tmp_path, "01_first", "First", a)
    index = build_site(tmp_path / "notebooks", tmp_path / "out")
    with pytest.raises(AssertionError, match="b.png"):
        check_site(index, tmp_path / "figures", 1)


def test_a_failed_notebook_is_not_published_and_the_old_site_stays(tmp_path):
    a = _png(tmp_path, "a", 1)
    _notebook(tmp_path, "01_first", "First", a)
    index = build_site(tmp_path / "notebooks", tmp_path / "out")
    before = {p.name: p.read_bytes() for p in index.parent.iterdir() if p.is_file()}
    _notebook(tmp_path, "02_bad", "Bad", None, error=True)
    with pytest.raises(SiteError, match="error output"):
        build_site(tmp_path / "notebooks", tmp_path / "out")
    after = {p.name: p.read_bytes() for p in index.parent.iterdir() if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_the_cli_refuses_bad_input_with_one_line_and_exit_2(tmp_path, capsys):
    assert site.main(["--notebooks", str(tmp_path / "nothing"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no folder") and err.count("\n") == 1
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("x")
    _notebook(tmp_path, "01_first", "First", _png(tmp_path, "a", 1))
    assert site.main(["--notebooks", str(tmp_path / "notebooks"),
                      "--out", str(tmp_path / "keep")]) == 2
    assert "not a site built here" in capsys.readouterr().err
    assert (tmp_path / "keep" / "precious.txt").read_text() == "x"
    assert not (tmp_path / "keep" / MARKER).exists()
