"""Prefect flows of sparseseg (thin wiring of library calls)."""
