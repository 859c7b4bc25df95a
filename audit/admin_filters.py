"""The audit changelist's filters, under the query parameters of the API.

Each filter narrows the changelist through ``audit.selectors``, named as the
API names it (``?outcome=``, ``?status=5xx``, ``?since=&until=``, ``?q=``), so
the changelist's query string is also an export's: the export link passes it
on as it is. A bad value is the admin's "invalid lookup" page, not a 500.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from oauth2_provider.models import get_application_model

from audit.models import AuditRecord, Outcome, Protocol
from audit.selectors import audit_record_filter, record_filters_parse

# The names offered come from the small tables that name them, never from a
# scan of the records: the routes, the providers and the error classes a
# record can carry are the streaming app's, which adds its sources when it is
# ready (audit never imports streaming).
model_names: list[Callable[[], Iterable[str]]] = []
provider_names: list[Callable[[], Iterable[str]]] = []
error_classes: list[Callable[[], Iterable[str]]] = []

MAX_CHOICES = 50  # a sidebar's worth, alphabetical

STATUS_CLASSES = [
    ("2xx", "2xx success"),
    ("4xx", "4xx client error"),
    ("429", "429 rate limited"),
    ("5xx", "5xx server error"),
]


def _narrow(queryset: QuerySet[AuditRecord], params: dict[str, str]) -> QuerySet[AuditRecord]:
    try:
        return audit_record_filter(filters=record_filters_parse(params), records=queryset)
    except ValidationError as error:
        raise IncorrectLookupParameters(error) from error


def _app_names() -> Iterable[str]:
    return get_application_model().objects.values_list("name", flat=True)


def _named(sources: Iterable[Callable[[], Iterable[str]]]) -> list[tuple[str, str]]:
    names = sorted({name for source in sources for name in source() if name})
    return [(name, name) for name in names[:MAX_CHOICES]]


def record_filter(
    parameter: str, label: str, offered: Callable[[], Iterable[tuple[str, str]]]
) -> type[admin.SimpleListFilter]:
    """A sidebar filter that sets the API's ``?<parameter>=`` to one of ``offered()``."""

    class RecordFilter(admin.SimpleListFilter):
        title = label
        parameter_name = parameter

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return list(offered())

        def has_output(self) -> bool:
            # The admin applies only the filters it shows: a value nobody offers
            # (a deleted app's name) must still narrow the list.
            return self.value() is not None or super().has_output()

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            value = self.value()
            return queryset if value is None else _narrow(queryset, {parameter: value})

    return RecordFilter


# The sidebar after the dates, in order.
CHOICE_FILTERS = (
    record_filter("outcome", "outcome", lambda: Outcome.choices),
    record_filter("status", "HTTP status", lambda: STATUS_CLASSES),
    record_filter("error_class", "error class", lambda: _named(error_classes)),
    record_filter("app", "app", lambda: _named([_app_names])),
    record_filter("model", "model", lambda: _named(model_names)),
    record_filter("provider", "provider", lambda: _named(provider_names)),
    record_filter("protocol", "protocol", lambda: Protocol.choices),
)


class StartedBetweenFilter(admin.ListFilter):
    """``?since=&until=``: dates (``until`` includes its day) or ISO datetimes, in UTC."""

    title = "started (UTC)"
    template = "admin/audit/started_between_filter.html"
    parameters = ("since", "until")

    def __init__(
        self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any
    ) -> None:
        super().__init__(request, params, model, model_admin)
        for name in self.parameters:
            if name in params:
                value = params.pop(name)
                self.used_parameters[name] = value[-1] if isinstance(value, list) else value

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return list(self.parameters)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        bounds = {k: str(v) for k, v in self.used_parameters.items() if v}
        return _narrow(queryset, bounds) if bounds else queryset

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        # One "choice": the form's values, and the other parameters to keep.
        kept = [
            (name, value)
            for name, values in changelist.params.items()
            if name not in (*self.parameters, "p")
            for value in (values if isinstance(values, list) else [values])
        ]
        yield {
            "since": self.used_parameters.get("since", ""),
            "until": self.used_parameters.get("until", ""),
            "kept": kept,
            "clear_query_string": changelist.get_query_string(remove=list(self.parameters)),
        }
