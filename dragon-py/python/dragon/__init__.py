"""dragon: Python multiprocessing on shared-memory channels."""
