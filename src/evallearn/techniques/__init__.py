"""Concept-unlearning techniques, one per file. See ``base.Technique``."""
