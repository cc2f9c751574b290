"""Derived metrics: what fraction of the hardware's peak a measured point reached (roofline)."""
