"""Builders: a local clone of a public data set in, a MedMNIST-layout npz out (see README, 'Real
field data'). Each is a command::

    python -m runner.data.builders.pbc --clone DIR --out pbc360.npz
    python -m runner.data.builders.wbc_fields --clone DIR --out wbc_fields480.npz

``pbc`` writes the PBC frames at native resolution, ``wbc_fields`` square windows of smear fields
with one white cell each, split by original; ``shared`` holds what both need (the split, the flags,
the streamed, atomic npz writer that never overwrites a file it did not write). Nothing is
downloaded: the clone is the user's.
"""
