"""Sorting and paging of the Billing tables from query arguments (?sort=&dir=&page=), shared by
every page; the `sort_header` and `pagination` macros in _macros.html render a Page."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import request, url_for
from sqlalchemy import ColumnElement

# A page number past this is a hand-edited URL: capping it keeps OFFSET inside every
# database's integer range (clamp() then shows the last page).
MAX_PAGE = 1_000_000
# Row ids are 32-bit on every supported database; a bigger number in a URL names no row.
MAX_ID = 2**31 - 1
# Search boxes: longer than any name or e-mail address, so nothing real is cut.
MAX_SEARCH = 200


@dataclass
class Page:
    """Where the user is in a sorted, paged table; ``total`` is filled after the query."""

    endpoint: str
    sort: str
    direction: str
    number: int
    size: int
    total: int = 0
    # Other query arguments (filters, search) kept on every sort and page link.
    keep: dict[str, Any] = field(default_factory=dict)
    view_args: dict[str, Any] = field(default_factory=dict)
    page_arg: str = "page"

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    def url(self, **changes: Any) -> str:
        args: dict[str, Any] = {**self.view_args, **self.keep}
        args.update(sort=self.sort, dir=self.direction)
        args[self.page_arg] = self.number
        if "page" in changes and self.page_arg != "page":
            changes[self.page_arg] = changes.pop("page")
        args.update(changes)
        return url_for(self.endpoint, **{k: v for k, v in args.items() if v not in (None, "")})


def page_from_request(
    endpoint: str,
    sort_keys: Mapping[str, Any],
    *,
    default_sort: str,
    size: int,
    keep: Mapping[str, Any] | None = None,
    view_args: Mapping[str, Any] | None = None,
    page_arg: str = "page",
) -> Page:
    """Read sort, dir and page from the query string; unknown values fall back to defaults
    rather than failing, since they come from bookmarks and hand-edited URLs."""
    sort = request.args.get("sort", default_sort)
    if sort not in sort_keys:
        sort = default_sort
    direction = request.args.get("dir", "asc")
    if direction not in ("asc", "desc"):
        direction = "asc"
    number = page_number(request.args.get(page_arg, "1"))
    return Page(
        endpoint=endpoint,
        sort=sort,
        direction=direction,
        number=number,
        size=max(1, size),
        keep=dict(keep or {}),
        view_args=dict(view_args or {}),
        page_arg=page_arg,
    )


def page_number(text: str | None) -> int:
    """A page number from a query argument: 1 for nonsense, at most MAX_PAGE."""
    try:
        return min(MAX_PAGE, max(1, int(text or "1")))
    except ValueError:
        return 1


def order_by(page: Page, sort_keys: Mapping[str, ColumnElement[Any]], tiebreak: Any) -> list[Any]:
    """ORDER BY clauses for the page's sort key, with a unique tiebreak so paging is stable."""
    column = sort_keys[page.sort]
    primary = column.desc() if page.direction == "desc" else column.asc()
    return [primary, tiebreak]


def clamp(page: Page) -> None:
    """After the total is known: a page past the end shows the last page."""
    if page.number > page.pages:
        page.number = page.pages
