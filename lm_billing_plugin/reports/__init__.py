"""Reports over billing's tables: the overview's figures, usage, revenue and plan limits, each
one set-based query (no query per row), plus the geometry of the pages' SVG charts."""
