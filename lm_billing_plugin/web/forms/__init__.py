"""The forms of the Billing pages, one module per subject; every POST is one of these (CSRF)."""
