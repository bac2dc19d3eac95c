"""The catalog: customers, billing groups, hosting plans, what is assigned to them, and the gate
that keeps assignment away from servers whose data is stale."""
