"""Where tasks run: a LocalCluster we start, or a scheduler we connect to."""
