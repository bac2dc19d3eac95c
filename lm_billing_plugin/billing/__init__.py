"""The billing cycle: charges, bill runs, invoices, sending.
Pure computation in compute.py; services beside it."""
