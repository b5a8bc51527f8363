"""Judges: image -> score models (CLIP, toy classifier, NudeNet, Q16, ...). See ``base.Judge``."""
