"""Re-implementations of published methods, used only as benchmark baselines (not part of PASTALib)."""
