"""TclPort client: the typed commands (server_info, logging, sites, lists, usage, look-ups) of
one hosting server, on a connection.TclPortConnection (connect, framing, limits, errors).

One client is one connection and is not thread-safe; use one client per thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from datetime import date
from typing import Final

from .codec import decode_dict, decode_list
from .connection import (
    COMMANDS,
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    MAX_HEADER_BYTES,
    MAX_PAGE_SIZE,
    MAX_REQUEST_BYTES,
    ClientSettings,
    TclPortConnection,
    size_text,
)
from .errors import (
    MALFORMED,
    TclPortError,
)
from .records import (
    MAX_MATCHES,
    AdminMatch,
    ListRecord,
    LoggingState,
    Matches,
    MemberMatch,
    RecordError,
    ServerInfo,
    SiteRecord,
    UsageRecord,
    parse_deleted,
    parse_int,
    parse_matches,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_PASSWORD",
    "DEFAULT_PORT",
    "MAX_HEADER_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_REQUEST_BYTES",
    "TOO_MANY_LISTS",
    "ClientSettings",
    "TclPortClient",
]

log = logging.getLogger("lm_billing_plugin.tclport")


# A server announcing more lists than ClientSettings.max_lists (refused before reading them).
TOO_MANY_LISTS: Final = "TOO_MANY_LISTS"

# Restarts of a full list read when the server's total changes under it (live edits).
_LIST_ATTEMPTS: Final = 3


class TclPortClient(TclPortConnection):
    """A connection to one hosting server's TclPort.

    ``connect()`` resolves, connects, reads the greeting and authenticates within one
    ``operation_timeout``; each command then gets its own ``operation_timeout``, and every
    single read its ``read_timeout``. Any failure raises :class:`TclPortError`; after a
    protocol error or timeout the connection is closed and a new client is needed.
    """

    def _malformed(self, command: str, what: str) -> TclPortError:
        # Section 6: say what was wrong and how large the reply was.
        return self._error(
            f"command:{command}", MALFORMED,
            detail=f"{what} (in a {command} reply of {size_text(self._reply_bytes)})",
        )

    def _dict(self, command: str, body: str) -> dict[str, str]:
        try:
            return decode_dict(body)
        except ValueError as exc:
            raise self._malformed(
                command, f"the {command} reply is not a Tcl dict ({exc})"
            ) from None

    def _dicts(self, command: str, body: str) -> list[dict[str, str]]:
        try:
            return [decode_dict(item) for item in decode_list(body)]
        except ValueError as exc:
            raise self._malformed(
                command, f"the {command} reply is not a list of Tcl dicts ({exc})"
            ) from None

    def server_info(self) -> ServerInfo:
        data = self._dict("server_info", self.call("server_info"))
        try:
            return ServerInfo.from_dict(data)
        except RecordError as exc:
            raise self._malformed("server_info", str(exc)) from None

    def logging(self) -> LoggingState:
        data = self._dict("logging", self.call("logging"))
        try:
            return LoggingState.from_dict(data)
        except RecordError as exc:
            raise self._malformed("logging", str(exc)) from None

    def logging_set(self, mode: str) -> LoggingState:
        data = self._dict("logging_set", self.call("logging_set", mode))
        try:
            return LoggingState.from_dict(data)
        except RecordError as exc:
            raise self._malformed("logging_set", str(exc)) from None

    def _unique(self, command: str, what: str, names: list[str]) -> None:
        # Spec 4: names are unique per server; a repeat would be counted or stored twice.
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise self._malformed(command, f"{what} {name[:40]!r} appears twice")
            seen.add(name)

    def sites(self) -> list[SiteRecord]:
        try:
            sites = [SiteRecord.from_dict(d) for d in self._dicts("sites", self.call("sites"))]
        except RecordError as exc:
            raise self._malformed("sites", str(exc)) from None
        self._unique("sites", "site", [s.name for s in sites])
        return sites

    def usage(self, from_date: date, to_date: date) -> list[UsageRecord]:
        """Per-list sending totals for the inclusive range ``from_date`` .. ``to_date``."""
        if from_date > to_date:
            raise ValueError("usage: from_date is after to_date")
        body = self.call("usage", from_date.isoformat(), to_date.isoformat())
        try:
            rows = [UsageRecord.from_dict(d) for d in self._dicts("usage", body)]
        except RecordError as exc:
            raise self._malformed("usage", str(exc)) from None
        # One row per list (spec 4): a second row for a list would be billed twice.
        self._unique("usage", "list", [u.list for u in rows])
        return rows

    def lists_page(self, offset: int, limit: int) -> tuple[int, list[ListRecord]]:
        """One ``lists OFFSET LIMIT`` call: the server's total and this page's lists."""
        if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"lists: OFFSET must be >= 0 and LIMIT 1 to {MAX_PAGE_SIZE}")
        data = self._dict("lists", self.call("lists", str(offset), str(limit)))
        try:
            total = parse_int("lists", "total", data.get("total", ""))
            if "items" not in data:
                raise RecordError("lists", "items", "is missing")
            items = [ListRecord.from_dict(d) for d in self._dicts("lists", data["items"])]
        except RecordError as exc:
            raise self._malformed("lists", str(exc)) from None
        return total, items

    def _pages(self) -> Iterator[tuple[int, list[ListRecord]]]:
        limit = self.settings.page_size
        offset = 0
        pages = 0
        max_pages: int | None = None
        while True:
            total, items = self.lists_page(offset, limit)
            pages += 1
            if max_pages is None and self.settings.max_lists and total > self.settings.max_lists:
                raise self._error(
                    "command:lists", TOO_MANY_LISTS,
                    detail=f"{total:,} lists announced",
                    message=(
                        f"server {self.label!r} announces {total:,} lists, more than "
                        f"LM_BILLING_MAX_LISTS_PER_SERVER ({self.settings.max_lists:,}); "
                        "nothing of it was stored. Raise the setting if the server really "
                        "holds that many."),
                )
            if max_pages is None:
                # Slack for lists added while paging; a server that keeps announcing more
                # pages than its first total allows is inconsistent, not just busy.
                max_pages = -(-total // limit) + 2
            if pages > max_pages:
                raise self._malformed(
                    "lists", f"the server kept announcing more lists after {pages - 1} pages"
                )
            if len(items) > limit:
                raise self._malformed(
                    "lists", f"a page asked for {limit} lists held {len(items)}"
                )
            keys = [item.name.encode("utf-8", "surrogatepass") for item in items]
            if any(a >= b for a, b in itertools.pairwise(keys)):
                raise self._malformed("lists", "a page of lists is not sorted by name")
            if not items and offset < total:
                raise self._malformed(
                    "lists",
                    f"the server announced {total:,} lists but returned none at offset {offset:,}",
                )
            yield total, items
            offset += len(items)
            if offset >= total:
                return

    def iter_lists(self) -> Iterator[ListRecord]:
        """All lists, sorted by name, fetched ``page_size`` at a time."""
        last: bytes | None = None
        for _total, items in self._pages():
            for item in items:
                key = item.name.encode("utf-8", "surrogatepass")
                # A list created while paging shifts later pages; skip what was already seen.
                if last is not None and key <= last:
                    continue
                last = key
                yield item

    def lists(self) -> list[ListRecord]:
        """All lists as one consistent snapshot (re-read if they change while paging)."""
        for attempt in range(1, _LIST_ATTEMPTS + 1):
            totals: set[int] = set()
            out: list[ListRecord] = []
            last: bytes | None = None
            for total, items in self._pages():
                totals.add(total)
                for item in items:
                    key = item.name.encode("utf-8", "surrogatepass")
                    if last is not None and key <= last:
                        continue
                    last = key
                    out.append(item)
            if len(totals) == 1 and len(out) == totals.pop():
                return out
            log.debug("%s: lists changed while paging (attempt %d)", self.label, attempt)
        raise self._error(
            "command:lists", "BUSY", abort=False,
            server_message="its lists kept changing while they were read",
        )

    # -- cross-server look-ups (spec 4b) ----------------------------------------------------

    def _items(self, command: str, data: dict[str, str]) -> list[dict[str, str]]:
        try:
            raw = decode_list(data.get("items", ""))
        except ValueError as exc:
            raise self._malformed(command, f"its items are not a Tcl list ({exc})") from None
        # Counted before each item is parsed: a reply of a million items is refused as a whole.
        if len(raw) > MAX_MATCHES:
            raise self._malformed(
                command, f"it held {len(raw):,} items, more than the {MAX_MATCHES:,} allowed"
            )
        try:
            return [decode_dict(item) for item in raw]
        except ValueError as exc:
            raise self._malformed(command, f"its items are not Tcl dicts ({exc})") from None

    def find_admin(self, pattern: str) -> Matches[AdminMatch]:
        """Lists whose admin's email or name contains any ``|``-separated part of ``pattern``
        (case-insensitive, decided by the server); at most 5,000, ``truncated`` past that."""
        if not pattern:
            raise ValueError("find_admin: PATTERN must not be empty")
        data = self._dict("find_admin", self.call("find_admin", pattern))
        items = self._items("find_admin", data)
        try:
            found = parse_matches(
                "find_admin", data, [AdminMatch.from_dict(d) for d in items]
            )
        except RecordError as exc:
            raise self._malformed("find_admin", str(exc)) from None
        # One item per list (spec 4b): a repeat would be shown, and acted on, twice.
        self._unique("find_admin", "list", [m.list for m in found.items])
        return found

    def find_member(self, email: str) -> Matches[MemberMatch]:
        """The lists that have ``email`` as a member (compared case-insensitively)."""
        if not email:
            raise ValueError("find_member: EMAIL must not be empty")
        data = self._dict("find_member", self.call("find_member", email))
        items = self._items("find_member", data)
        try:
            found = parse_matches(
                "find_member", data, [MemberMatch.from_dict(d) for d in items]
            )
        except RecordError as exc:
            raise self._malformed("find_member", str(exc)) from None
        self._unique("find_member", "list", [m.list for m in found.items])
        wanted = email.lower()
        for match in found.items:
            # Deletions act on what a search found: a membership of another address must
            # never be offered for deletion, whatever the server's matching does.
            if match.email.lower() != wanted:
                raise self._malformed(
                    "find_member",
                    f"it answered a search for {email[:60]!r} with the member "
                    f"{match.email[:60]!r} of list {match.list[:40]!r}",
                )
        return found

    def delete_member(self, list_name: str, email: str) -> bool:
        """Remove ``email`` from ``list_name``; True when a member was removed, False when
        there was none. A server that forbids remote deletions raises NOT_PERMITTED."""
        if not list_name or not email:
            raise ValueError("delete_member: LIST and EMAIL must not be empty")
        data = self._dict("delete_member", self.call("delete_member", list_name, email))
        try:
            return parse_deleted(data)
        except RecordError as exc:
            raise self._malformed("delete_member", str(exc)) from None
