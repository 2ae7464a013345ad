"""What a trial is measured by: accuracy, FLOPs, parameters, latency, peak memory and throughput.

``get_objective(name)`` gives the name's direction, unit, label and measure function; the count
and measure functions below are usable on their own. Importing this package pulls in torch only.
"""

from objectives.flops import count_flops, counted_flops
from objectives.registry import (
    Objective,
    ObjectiveError,
    get_objective,
    measure_accuracy,
    measure_objective,
    objective_names,
    register_objective,
)
from objectives.resources import count_params, measure_latency_ms, measure_peak_memory_mb
from objectives.throughput import Deployment, Throughput, deployed, measure_throughput, use_deployment

__all__ = [
    "Deployment",
    "Objective",
    "ObjectiveError",
    "count_flops",
    "count_params",
    "counted_flops",
    "get_objective",
    "measure_accuracy",
    "measure_latency_ms",
    "measure_objective",
    "measure_peak_memory_mb",
    "measure_throughput",
    "objective_names",
    "register_objective",
    "Throughput",
    "deployed",
    "use_deployment",
]
