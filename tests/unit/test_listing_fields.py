"""The listing's fields, named once in `domain.listing`, are the spec's: what the spec lets a
client sort and filter by is what both stores index and match."""

from __future__ import annotations

from calls_server.contract import load_spec
from calls_server.domain import listing


def test_the_sort_fields_are_the_specs_sort_by():
    assert list(listing.SORT_FIELDS) == load_spec()["components"]["schemas"]["SortBy"]["enum"]


def test_the_filters_are_the_specs_filter_criteria():
    criteria = load_spec()["components"]["schemas"]["FilterCriteria"]["properties"]

    assert set(listing.FILTERS) == set(criteria)


def test_every_filter_of_the_list_query_is_a_query_parameter_of_list_calls():
    operation = load_spec()["paths"]["/calls"]["get"]
    names = set()
    for parameter in operation["parameters"]:
        if "$ref" in parameter:
            parameter = load_spec()["components"]["parameters"][parameter["$ref"].split("/")[-1]]
        names.add(parameter["name"])
    ranges = {
        f"{name}_{bound}"
        for name in listing.RANGE_FIELDS
        for bound in ("lower_threshold", "upper_threshold")
    }
    single = set(listing.FILTERS) - set(listing.RANGE_FIELDS)

    assert single | ranges <= names, (single | ranges) - names
