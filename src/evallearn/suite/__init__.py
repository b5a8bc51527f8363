"""Benchmark suites: a matrix of runs (models × techniques with small grids of their params ×
concepts × seeds) sharing metrics, probes and sampler, expanded into ordinary run configs
(:mod:`.spec`, :mod:`.cells`) and run by an executor (:mod:`.executor`: in this process, or on a
Ray cluster). ``eval-learn bench SUITE.yaml`` is :mod:`evallearn.commands.bench`; docs/suites.md.
"""
