"""The search space: YAML specs, the model space they describe, and sampling from it."""
