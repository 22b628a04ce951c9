"""HTML pages from Jinja2 templates, autoescaped: one shell for every page of this package.

A page is a list of sections; a section is a template plus a data function. The shell
(``templates/page.html`` with ``style.css`` and ``images_loaded.js``) gives every page the same
header, navigation, CSS, Content-Security-Policy (no network fetch: everything is inline or a
``data:`` URI) and the script that lets a headless browser check that every image decoded.

To add a section to a page (the run report's sections are ``pipeline.report.page.SECTIONS``,
the comparison's ``pipeline.compare.page.SECTIONS``):

1. write ``templates/<page>/<anchor>.html``; it sees the data function's dict as ``data``, the
   filters registered below and the macros of ``templates/macros.html`` (``{% from
   "macros.html" import table %}``);
2. write the data function, ``source -> dict`` of plain values (numbers, text, lists,
   ``data:`` URIs from ``data_uri``, ``Picture``), never HTML;
3. decorate it with ``@SECTIONS.add(anchor, nav title, heading)``, placed in the module where
   the section goes in the page (sections appear in the order they are added).

A section defined in another module goes in with ``@SECTIONS.add(..., before="examples")``
(that module must then be imported by the page's module). A new page is a folder of
templates and a ``Sections()`` passed to ``render_page``. Every value from the data is
escaped by the template engine; no Python code in this package writes HTML.
"""

from __future__ import annotations

import base64
import datetime
import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


@dataclass(frozen=True)
class Section:
    anchor: str  # the id in the page and the navigation's link target
    nav: str  # the navigation's link text
    heading: str
    data: Callable[[Any], Mapping[str, Any]]  # the page's source -> the template's `data`


class Sections(list):
    """A page's sections in order. ``@SECTIONS.add(anchor, nav, heading)`` on a data function
    appends its section (the heading defaults to the navigation title), or inserts it before
    the section ``before``."""

    def add(self, anchor: str, nav: str, heading: str | None = None, before: str | None = None):
        def register(data: Callable[[Any], Mapping[str, Any]]):
            anchors = [s.anchor for s in self]
            if anchor in anchors:
                raise ValueError(f"section {anchor!r} is already on the page")
            at = anchors.index(before) if before is not None else len(self)
            self.insert(at, Section(anchor, nav, heading or nav, data))
            return data

        return register


@dataclass(frozen=True)
class Picture:
    """An embedded image, or the reason it could not be read (shown in its place)."""

    alt: str
    uri: str | None = None  # a data: URI
    error: str | None = None
    width: int | None = None
    pixelated: bool = False


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def picture(
    read: Callable[[], tuple[bytes, str]],
    alt: str,
    width: int | None = None,
    pixelated: bool = False,
) -> Picture:
    """``read() -> (bytes, mime)`` embedded; any failure to read is said in the picture."""
    try:
        return Picture(alt, data_uri(*read()), None, width, pixelated)
    except Exception as e:  # noqa: BLE001 - any unreadable picture is shown as missing
        from transforms.files import NotRead

        reason = (
            f"missing: {e}"
            if isinstance(e, NotRead)
            else f"cannot be read: {type(e).__name__}: {e}"
        )
        return Picture(alt, None, f"{alt} {reason}", width, pixelated)


def dash(value):
    """None as an em dash."""
    return "—" if value is None else value


def cell(value):
    """A table cell: None as an em dash, floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return dash(value)


def pct(value: float) -> str:
    return f"{value:.1%}"


def code_spans(text: str) -> list[tuple[bool, str]]:
    """``"a `b` c"`` -> [(False, "a "), (True, "b"), (False, " c")]: names between backticks
    are set as code by the templates."""
    parts = re.split(r"`([^`]*)`", text)
    return [(i % 2 == 1, part) for i, part in enumerate(parts) if part or i % 2]


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(dash=dash, cell=cell, pct=pct, code_spans=code_spans)
    return env


def render_page(
    *, page: str, title: str, heading: str, subject: str, sections: Sequence[Section], source
) -> str:
    """The page: the shell around each section's template, ``templates/<page>/<anchor>.html``,
    rendered with the section's data of ``source``."""
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    parts = [(s, f"{page}/{s.anchor}.html", s.data(source)) for s in sections]
    return (
        environment()
        .get_template("page.html")
        .render(title=title, heading=heading, subject=subject, generated=generated, sections=parts)
        + "\n"
    )
