"""The plugin's Alembic history, shipped as lm_billing_plugin.migrations."""
