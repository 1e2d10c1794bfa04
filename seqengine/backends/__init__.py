"""Backends: one package per target (cpu; cuda to come)."""
