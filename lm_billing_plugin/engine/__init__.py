"""The engine: what a server has (inventory), what billing expects (reconcile, pure), how it is
stored (store), and the services that run it: server registry, checks, batches, fixes."""
