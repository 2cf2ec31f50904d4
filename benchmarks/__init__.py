"""Side-by-side benchmarks of the pyrepl3 kernel and ipykernel; see `run.py`."""
