"""The web face: the lm_billing blueprint, access control, menu, portal adapters,
the pages (views/) and their forms (forms/)."""
