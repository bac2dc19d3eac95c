"""The API resources, one module per subject; each registers its routes on the API blueprint
when imported (web/api/__init__.py imports them all)."""
