"""What the user sees: Pareto/hypervolume maths and the HTML report."""
