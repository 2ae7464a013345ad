"""Running the search: CLI, trial training loop, backends, data, export."""
