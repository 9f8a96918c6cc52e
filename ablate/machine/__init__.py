"""The machine a run trains on: device and precision probes, processes, load, signals."""
