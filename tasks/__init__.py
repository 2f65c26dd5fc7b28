"""Pure functions that run on Dask workers.

Nothing in this package imports dask or distributed: every function is
top-level, picklable, takes plain data and returns plain data.
"""
