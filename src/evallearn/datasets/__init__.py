"""Prompt datasets: the benchmark prompt sets (I2P, COCO, TIFA, Ring-A-Bell, MMA-Diffusion,
P4D, user CSVs), each read from its public home or a local file, with a toy-world analogue.

Registered in the ``evallearn.datasets`` entry-point group; see :mod:`.base`.
"""
