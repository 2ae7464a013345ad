"""The engine: what runs a search whatever the executor. The driver owns every ask and tell
(``driver``); the sampler builds and budgets each config (``sampler``); a trial process executes a
payload (``execute``: the training loop is ``trial``, checkpoints ``checkpoint``); the study and its
journal (``study``); early stopping's rungs (``early_stopping``); progress lines (``progress``);
plugins (``plugins``); the dataset cache (``datasets``); and the executors, behind one interface
(``executor``; ``executors`` loads the built-ins: ``in_process``, ``ray_executor`` over ``ray_tune``).
The applications (search, export, predict, the report) sit above it and import from it, never the
other way round.
"""
