"""Proto messages <-> domain values, one module per service (`common` for what they share).

No rules here, only shapes: a servicer parses its request with these, calls a use case, and maps the
answer back with these. Nothing is re-exported from this package: a servicer imports the module of its
own service, so that a converter's home says which service it belongs to.
"""
