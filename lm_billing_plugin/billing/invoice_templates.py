"""Invoice templates: the Email (plain text) and Web (HTML, autoescaped) Invoice Templates,
rendered from plain invoice data in a bounded Jinja sandbox; render_invoice() for senders.

The sandbox guarantee: a template sees only the invoice data given to it (no config, request,
Python objects or underscore attributes), may call no method that grows data, and is bounded
in range() size, value and output length, and render time. Whatever a template does, the
outcome is its text or a TemplateProblem with a line number: never a 500, never code run.

One module on purpose: the sandbox, its bounds and the built-in templates are one security
boundary, reviewed in one place.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from string import Template
from types import BuiltinMethodType, FrameType, MethodType
from typing import Any

import sqlalchemy as sa
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.nodes import Concat, EvalContext
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from sqlalchemy.orm import Session

from ..i18n import M_, N_, Words, gettext
from ..models import Customer, Invoice, InvoiceLine, InvoiceTemplate
from .invoices import issued_day

__all__ = [
    "DEFAULT_SOURCES",
    "KIND_LABELS",
    "InvoiceContext",
    "TemplateProblem",
    "check_template",
    "invoice_context",
    "render_invoice",
    "sample_context",
    "template_choices",
    "template_source",
]

KIND_LABELS = Words({"email": N_("Email Invoice Template"), "web": N_("Web Invoice Template")})

# The bounds. A real invoice template needs a fraction of each.
MAX_SOURCE = 100_000  # characters of template source
MAX_RANGE = 10_000  # items of one range()
MAX_VALUE = 200_000  # characters (or items) of any string or list a template builds
MAX_OUTPUT = 500_000  # characters of rendered output
MAX_ARG = 10_000  # any whole-number argument to a filter or method (widths, counts)
RENDER_SECONDS = 2.0
TEMPLATE_FILE = "<template>"


class TemplateProblem(ValueError):
    """The template cannot be used: the message says why, lineno where (None = unknown)."""

    def __init__(self, message: str, lineno: int | None = None) -> None:
        self.message = message
        self.lineno = lineno
        super().__init__(f"Line {lineno}: {message}" if lineno else message)


class _OverBudget(Exception):
    """Raised inside a render that ran out of time (by the trace hook)."""


# --- The invoice as plain data ---------------------------------------------------------------


@dataclass(frozen=True)
class LineData:
    kind: str
    description: str
    quantity: str
    unit_price: str
    amount: str


@dataclass(frozen=True)
class GroupData:
    name: str
    lines: tuple[LineData, ...]
    subtotal: str


@dataclass(frozen=True)
class CustomerData:
    company: str
    contact_name: str
    email: str
    additional_emails: str


@dataclass(frozen=True)
class InvoiceContext:
    """What a template sees as ``invoice``: the Invoice snapshot, amounts as strings."""

    number: str
    status: str
    period_start: str
    period_end: str
    issued: str
    currency: str
    customer: CustomerData
    groups: tuple[GroupData, ...]
    other_lines: tuple[LineData, ...]  # invoice-wide lines (carried credits)
    total: str
    carried_over: str
    customer_id: int | None = None
    sample: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):,}"


def _quantity(value: Decimal) -> str:
    return f"{value.normalize():f}"  # 0.484, 12.5, 1


def _unit_price(value: Decimal) -> str:
    # At least 2 decimals (19.95), up to the 4 a CPM uses (0.4500 -> 0.45).
    text = f"{value.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{int(whole):,}.{(frac + '00')[:max(2, len(frac))]}" if whole != "-0" else text


def _line(line: Any) -> LineData:
    return LineData(
        kind=line.kind,
        description=line.description,
        quantity=_quantity(line.quantity),
        unit_price=_unit_price(line.unit_price),
        amount=money(line.amount),
    )


def _group_lines(lines: Sequence[Any]) -> tuple[tuple[GroupData, ...], tuple[LineData, ...]]:
    order: list[str] = []
    by_group: dict[str, list[Any]] = {}
    other: list[LineData] = []
    for line in lines:
        if not line.group_name:
            other.append(_line(line))
            continue
        if line.group_name not in by_group:
            order.append(line.group_name)
            by_group[line.group_name] = []
        by_group[line.group_name].append(line)
    groups = tuple(
        GroupData(
            name=name,
            lines=tuple(_line(x) for x in by_group[name]),
            subtotal=money(sum((x.amount for x in by_group[name]), Decimal("0"))),
        )
        for name in order
    )
    return groups, tuple(other)


def invoice_context(session: Session, invoice: Invoice) -> InvoiceContext:
    """The plain-data snapshot of a stored invoice and its lines (two queries)."""
    lines = list(
        session.scalars(
            sa.select(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice.id)
            .order_by(InvoiceLine.position)
        )
    )
    groups, other = _group_lines(lines)
    return InvoiceContext(
        number=invoice.number,
        status=invoice.status,
        period_start=invoice.period_start.isoformat(),
        period_end=invoice.period_end.isoformat(),
        issued=issued_day(invoice.created_at).isoformat(),
        currency=invoice.currency,
        customer=CustomerData(
            company=invoice.company,
            contact_name=invoice.contact_name,
            email=invoice.email,
            additional_emails=invoice.additional_emails,
        ),
        groups=groups,
        other_lines=other,
        total=money(invoice.total),
        carried_over=money(invoice.carried_over),
        customer_id=invoice.customer_id,
    )


@dataclass(frozen=True)
class _SampleLine:
    group_name: str
    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


def _billing_today() -> date:
    """Today where billing days start (LM_BILLING_BILLING_TIMEZONE) in an app; UTC outside."""
    from flask import has_app_context

    from ..state import get_state

    if has_app_context():
        return get_state().settings.billing_today()
    return datetime.now(UTC).date()


def sample_context(customer: Customer | None = None, currency: str = "USD") -> InvoiceContext:
    """An invoice built in memory for the preview when no invoice exists yet."""
    lines = [
        _SampleLine(gettext("Newsletters"), "plan", gettext("Gold plan"), Decimal("1"),
                    Decimal("19.95"),
                    Decimal("19.95")),
        _SampleLine(gettext("Newsletters"), "overage",
                    gettext("Overage: 12.5 thousand message units"),
                    Decimal("12.5"), Decimal("0.45"), Decimal("5.63")),
        _SampleLine(gettext("Newsletters"), "charge", gettext("Setup Fee"), Decimal("1"),
                    Decimal("50"),
                    Decimal("50.00")),
        _SampleLine(gettext("Announcements"), "plan", gettext("Basic plan"), Decimal("0.484"),
                    Decimal("10"),
                    Decimal("4.84")),
    ]
    groups, other = _group_lines(lines)
    today = _billing_today()
    start = today.replace(day=1)
    return InvoiceContext(
        number=f"{today.year}-00000",
        status="sample",
        period_start=start.isoformat(),
        period_end=today.isoformat(),
        issued=today.isoformat(),
        currency=currency,
        customer=CustomerData(
            company=customer.company if customer else gettext("Example Publishing"),
            contact_name=customer.contact_name if customer else "Pat Example",
            email=customer.email if customer else "billing@example.com",
            additional_emails=customer.additional_emails if customer else "",
        ),
        groups=groups,
        other_lines=other,
        total=money(sum((x.amount for x in lines), Decimal("0"))),
        carried_over="0.00",
        customer_id=customer.id if customer else None,
        sample=True,
    )


# --- The shipped defaults --------------------------------------------------------------------

# The defaults' words are translatable: the skeletons hold the markup, the words come from
# the catalog in the viewer's language (default_source) -- built outside a request they are
# the English below. A customer's own stored template is never translated: it stays as
# written. The catalog's messages carry the Jinja expressions as %(...)s values, so a
# translation can move them but never has to spell them.
_EMAIL_SKELETON = """\
$invoice_for
$period

$dear

$here_is
{% for group in invoice.groups %}
{{ group.name }}
{% for line in group.lines %}  {{ line.description }}: {{ line.quantity }} x \
{{ line.unit_price }} = {{ line.amount }}
{% endfor %}  $subtotal
{% endfor %}{% for line in invoice.other_lines %}
{{ line.description }}: {{ line.amount }}
{% endfor %}
$total

$thanks
"""

_WEB_SKELETON = """\
<!doctype html>
<html lang="$lang">
<head><meta charset="utf-8"><title>$invoice</title></head>
<body>
<h1>$invoice</h1>
<p>{{ invoice.customer.company }}<br>{{ invoice.customer.contact_name }}</p>
<p>$period_issued</p>
<table>
<thead><tr><th>$description</th><th>$quantity</th><th>$unit_price</th><th>$amount</th></tr></thead>
{% for group in invoice.groups %}
<tbody>
<tr><th colspan="4">{{ group.name }}</th></tr>
{% for line in group.lines %}
<tr><td>{{ line.description }}</td><td>{{ line.quantity }}</td>
<td>{{ line.unit_price }}</td><td>{{ line.amount }}</td></tr>
{% endfor %}
<tr><td colspan="3">$subtotal_word</td><td>{{ group.subtotal }}</td></tr>
</tbody>
{% endfor %}
{% for line in invoice.other_lines %}
<tr><td colspan="3">{{ line.description }}</td><td>{{ line.amount }}</td></tr>
{% endfor %}
<tfoot><tr><th colspan="3">$total_currency</th>
<td>{{ invoice.total }}</td></tr></tfoot>
</table>
</body>
</html>
"""


def _email_words() -> dict[str, str]:
    return {
        "invoice_for": gettext("Invoice %(number)s for %(company)s",
                               number="{{ invoice.number }}",
                               company="{{ invoice.customer.company }}"),
        "period": gettext("Period: %(start)s to %(end)s", start="{{ invoice.period_start }}",
                          end="{{ invoice.period_end }}"),
        "dear": gettext("Dear %(name)s,",
                        name="{{ invoice.customer.contact_name or invoice.customer.company }}"),
        "here_is": gettext("here is your invoice for list hosting."),
        "subtotal": gettext("Subtotal: %(amount)s", amount="{{ group.subtotal }}"),
        "total": gettext("Total: %(currency)s %(amount)s", currency="{{ invoice.currency }}",
                         amount="{{ invoice.total }}"),
        "thanks": gettext("Thank you for your business."),
    }


def _web_words() -> dict[str, str]:
    return {
        # The page's language code, as the catalog's language names itself ("de" in German).
        "lang": gettext("en"),
        "invoice": gettext("Invoice %(number)s", number="{{ invoice.number }}"),
        "period_issued": gettext("Period: %(start)s to %(end)s · Issued %(day)s",
                                 start="{{ invoice.period_start }}",
                                 end="{{ invoice.period_end }}", day="{{ invoice.issued }}"),
        "description": gettext("Description"),
        "quantity": gettext("Quantity"),
        "unit_price": gettext("Unit price"),
        "amount": gettext("Amount"),
        "subtotal_word": gettext("Subtotal"),
        "total_currency": gettext("Total (%(currency)s)", currency="{{ invoice.currency }}"),
    }


def default_source(kind: str) -> str:
    """The shipped default template of ``kind`` in the viewer's language (English outside a
    request): what a customer without a template of their own gets, and what a new template
    starts from."""
    if kind == "email":
        return Template(_EMAIL_SKELETON).substitute(_email_words())
    if kind == "web":
        return Template(_WEB_SKELETON).substitute(_web_words())
    raise ValueError(f"unknown template kind {kind!r}")


# The English defaults (the source language), as the tests and the docs quote them.
DEFAULT_EMAIL = default_source("email")
DEFAULT_WEB = default_source("web")

DEFAULT_SOURCES = {"email": DEFAULT_EMAIL, "web": DEFAULT_WEB}


def template_choices(session: Session, kind: str) -> list[tuple[int, str]]:
    """(id, name) choices for a customer's template field; 0 = the built-in default."""
    rows = session.execute(
        sa.select(InvoiceTemplate.id, InvoiceTemplate.name)
        .where(InvoiceTemplate.kind == kind)
        .order_by(InvoiceTemplate.name, InvoiceTemplate.id)
    ).all()
    return [(0, gettext("Built-in default")), *((int(tid), name) for tid, name in rows)]


def template_source(session: Session, kind: str, customer_id: int | None) -> str:
    """The source a customer's invoices use: their chosen template, else the default."""
    if kind not in KIND_LABELS:
        raise ValueError(f"unknown template kind {kind!r}")
    if customer_id is not None:
        column = Customer.email_template_id if kind == "email" else Customer.web_template_id
        body = session.scalar(
            sa.select(InvoiceTemplate.body)
            .join(Customer, column == InvoiceTemplate.id)
            .where(Customer.id == customer_id)
        )
        if body is not None:
            return str(body)
    return default_source(kind)


# --- The bounded sandbox ---------------------------------------------------------------------

# Methods a template may call on strings: none of them can make a string bigger than what
# MAX_VALUE already allows (replace and join are checked below).
_STR_METHODS = frozenset({
    "upper", "lower", "title", "capitalize", "casefold", "swapcase", "strip", "lstrip",
    "rstrip", "startswith", "endswith", "split", "rsplit", "splitlines", "isdigit",
    "isalpha", "isalnum", "isspace", "isupper", "islower", "count", "find", "rfind",
    "replace", "join", "removeprefix", "removesuffix", "partition", "rpartition",
})
_CONTAINER_METHODS = frozenset({"keys", "values", "items", "get", "index", "count"})
_SAFE_FILTERS = (
    "abs", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "first", "float", "format", "groupby", "indent", "int", "join", "last",
    "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
    "reverse", "round", "select", "selectattr", "slice", "sort", "string", "striptags",
    "sum", "title", "trim", "truncate", "unique", "upper", "urlencode", "wordcount",
    "wordwrap",
)
_BIG_WIDTH = re.compile(r"\d{5,}")  # a %-format or format() width of 10000 or more


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


def _check_size(value: Any, what: str = "a value") -> Any:
    if _size(value) > MAX_VALUE:
        raise SecurityError(M_("%(what)s would exceed %(limit)s characters or items") % {
            "what": what, "limit": MAX_VALUE})
    return value


def _check_args(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_ARG:
            raise SecurityError(
                M_("the number %(number)s is too big for this (at most %(limit)s)")
                % {"number": arg, "limit": MAX_ARG})


def _predicted_replace(text: str, old: str, new: str, count: int = -1) -> int:
    hits = (len(text) + 1) if old == "" else text.count(old)
    if count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _predicted_join(sep: str, items: Any) -> int:
    parts = list(items)
    return sum(len(str(p)) for p in parts) + len(sep) * max(0, len(parts) - 1)


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(M_("range() may give at most %(limit)s items") % {"limit": MAX_RANGE})
    return rng


def _wrap_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        # Filters take (value, ...) or, pass_environment/pass_eval_context ones, a context
        # object first: the value and that object are not sizes, the rest may be.
        values = [a for a in args if isinstance(a, int | str | list | tuple | Markup)]
        _check_args(values[1:])
        _check_args(kwargs.values())
        if name == "format" and values and _BIG_WIDTH.search(str(values[0])):
            raise SecurityError(N_("format widths of 10000 or more are not allowed"))
        if (
            name == "replace"
            and len(values) >= 3
            and isinstance(values[0], str)
            and _predicted_replace(str(values[0]), str(values[1]), str(values[2])) > MAX_VALUE
        ):
            raise SecurityError(M_("replace would exceed %(limit)s characters") % {
                "limit": MAX_VALUE})
        result = func(*args, **kwargs)
        if name == "join" and isinstance(result, str):
            _check_size(result, "join")
        return _check_size(result, f"filter {name}")

    # Jinja reads pass_context & co from the function itself.
    for attr in ("jinja_pass_arg",):
        if hasattr(func, attr):
            setattr(bounded, attr, getattr(func, attr))
    return bounded


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles "~" through the environment, so joined strings are size-checked too."""

    @optimizeconst
    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.lmb_concat(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with small range(), sizes, arguments and methods."""

    code_generator_class = _BoundedCodeGenerator
    # Intercepted, so "10 ** 10 ** 10" is never folded (or run) at compile time either.
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            auto_reload=False,
            cache_size=0,
        )
        self.filters = {n: _wrap_filter(n, self.filters[n]) for n in _SAFE_FILTERS}
        self.tests = dict(self.tests)
        # No namespace() (state carried across loop turns), cycler, lipsum, dict: only
        # range (bounded) and joiner remain of Jinja's globals.
        self.globals = {"range": _bounded_range, "joiner": self.globals["joiner"]}

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """Joins macro, call-block and {% set %}-block output (the compiled code's concat)."""
        out: list[str] = []
        total = 0
        for part in parts:
            total += len(part)
            if total > MAX_VALUE:
                raise SecurityError(M_("a block's text would exceed %(limit)s characters") % {
                    "limit": MAX_VALUE})
            out.append(part)
        return "".join(out)

    def wrap_str_format(self, value: Any) -> None:
        # No sandboxed str.format / format_map either: call() then refuses them by name,
        # since a format width ("{:>999999999}") allocates before any check could run.
        return None

    def lmb_concat(self, eval_ctx: EvalContext, parts: Sequence[Any]) -> str:
        total = 0
        for part in parts:
            total += len(str(part))
            if total > MAX_VALUE:
                raise SecurityError(M_("joined text would exceed %(limit)s characters") % {
                    "limit": MAX_VALUE})
        join = markup_join if eval_ctx.autoescape else str_join
        return join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError(N_("exponents above 64 are not allowed"))
            if isinstance(left, int | float) and abs(left) > 10**18:
                raise SecurityError(N_("a number that big cannot be raised to a power here"))
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_VALUE
                ):
                    raise SecurityError(M_("repeating would exceed %(limit)s items") % {
                        "limit": MAX_VALUE})
        if operator == "+" and _size(left) + _size(right) > MAX_VALUE:
            raise SecurityError(M_("adding would exceed %(limit)s characters or items") % {
                "limit": MAX_VALUE})
        if operator == "%" and isinstance(left, str) and _BIG_WIDTH.search(left):
            raise SecurityError(N_("format widths of 10000 or more are not allowed"))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, BuiltinMethodType | MethodType):
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            # Markup is a str too: its format() and padding methods are refused alike.
            if isinstance(owner, str):
                if name not in _STR_METHODS:
                    raise SecurityError(M_("the string method %(name)s() is not allowed here") % {
                        "name": name})
                if name == "replace" and len(args) >= 2:
                    count = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
                    if _predicted_replace(owner, str(args[0]), str(args[1]), count) > MAX_VALUE:
                        raise SecurityError(M_("replace would exceed %(limit)s characters") % {
                            "limit": MAX_VALUE})
                if name == "join" and args and _predicted_join(owner, args[0]) > MAX_VALUE:
                    raise SecurityError(M_("join would exceed %(limit)s characters") % {
                            "limit": MAX_VALUE})
            elif isinstance(owner, dict | list | tuple) and name not in _CONTAINER_METHODS:
                raise SecurityError(M_("the method %(name)s() is not allowed here") % {
                    "name": name})
        _check_args(args)
        _check_args(kwargs.values())
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call")


_ENVIRONMENTS: dict[str, BoundedSandbox] = {}
_ENV_LOCK = threading.Lock()


def _environment(kind: str) -> BoundedSandbox:
    if kind not in KIND_LABELS:
        raise ValueError(f"unknown template kind {kind!r}")
    with _ENV_LOCK:
        env = _ENVIRONMENTS.get(kind)
        if env is None:
            # HTML is autoescaped; the plain-text email is not HTML, so escaping would
            # only garble "&" in names.
            env = _ENVIRONMENTS[kind] = BoundedSandbox(autoescape=kind == "web")
        return env


def _template_line(exc: BaseException) -> int | None:
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == TEMPLATE_FILE:
            return frame.lineno
    return None


# Jinja's own syntax and undefined-name messages (English, from Jinja, no catalog of ours):
# marked here so a page says the usual ones in the viewer's language, the names kept.
_JINJA_WORDS = (
    M_("unexpected '%(token)s'"),
    M_("unexpected char '%(char)s' at %(position)s"),
    M_("Unexpected end of template. Jinja was looking for the following tags: %(tags)s. The "
       "innermost block that needs to be closed is %(block)s."),
    M_("Encountered unknown tag '%(tag)s'."),
    M_("expected token '%(expected)s', got '%(got)s'"),
    M_("Expected an expression, got '%(got)s'"),
    M_("'%(object)s' has no attribute '%(name)s'"),
    M_("'%(name)s' is undefined"),
    N_("end of print statement"), N_("end of statement block"),
)


def _words(exc: BaseException) -> str:
    if isinstance(exc, SecurityError):
        return M_("not allowed in an invoice template: %(why)s") % {"why": str(exc)}
    if isinstance(exc, RecursionError):
        return N_("the template calls itself too deeply")
    if isinstance(exc, MemoryError):
        return N_("the template needs too much memory")
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{message}"


def check_template(kind: str, source: str) -> None:
    """Raise TemplateProblem unless the source compiles (syntax only; see render_invoice)."""
    if len(source) > MAX_SOURCE:
        raise TemplateProblem(M_("the template is longer than %(limit)s characters") % {
            "limit": MAX_SOURCE})
    try:
        _environment(kind).from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or N_("syntax error"), exc.lineno) from None
    except (RecursionError, MemoryError, SecurityError) as exc:
        raise TemplateProblem(_words(exc), _template_line(exc)) from None


def _tracer(deadline: float) -> Callable[[FrameType, str, Any], Any]:
    """A trace hook that stops the template's own code (line by line) past the deadline;
    other code is not traced, so the cost stays with the template."""

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _OverBudget
        return local

    def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == TEMPLATE_FILE:
            return local
        if time.monotonic() > deadline:
            raise _OverBudget
        return None

    return global_trace


def _generated(template: Any, data: dict[str, Any]) -> Iterator[str]:
    return iter(template.generate(invoice=data))


def render_invoice(
    template_kind: str, invoice_context: InvoiceContext, *, source: str | None = None
) -> str:
    """The invoice rendered with a template: ``source``, else the customer's chosen
    template for ``template_kind`` ("email" or "web"), else the shipped default.

    Raises TemplateProblem (with the template's line number when known) for a template that
    does not compile, reaches outside the sandbox, runs past RENDER_SECONDS or writes more
    than MAX_OUTPUT characters.
    """
    if source is None:
        from ..state import get_state

        source = template_source(get_state().session, template_kind, invoice_context.customer_id)
    check_template(template_kind, source)
    template = _environment(template_kind).from_string(source)
    data = asdict(invoice_context)
    chunks: list[str] = []
    written = 0
    deadline = time.monotonic() + RENDER_SECONDS
    previous = sys.gettrace()
    sys.settrace(_tracer(deadline))
    try:
        for chunk in _generated(template, data):
            written += len(chunk)
            if written > MAX_OUTPUT:
                    raise TemplateProblem(M_("the output is longer than %(limit)s characters") % {
                        "limit": MAX_OUTPUT})
            chunks.append(chunk)
    except TemplateProblem:
        raise
    except _OverBudget:
        raise TemplateProblem(
            M_("the template ran longer than %(seconds)s seconds (a loop too big?)") % {
                "seconds": f"{RENDER_SECONDS:g}"}
        ) from None
    except Exception as exc:  # everything a template can provoke becomes its problem
        raise TemplateProblem(_words(exc), _template_line(exc)) from None
    finally:
        sys.settrace(previous)
    return "".join(chunks)

