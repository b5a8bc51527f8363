"""Adversarial prompt attacks on the *unlearned* pipeline: Ring-A-Bell, MMA-Diffusion, P4D.

Each attack is an :class:`~.base.Attack` with paper-default budgets as parameters; results are
cached by spec hash (attack, params, target prompts, target model) and can be written to / read
from a CSV of precomputed prompts. The ``asr`` metric runs them (``attack: {name, params}``).
Attacks are registered through the ``evallearn.attacks`` entry-point group, like every other
component (see :data:`evallearn.registry.attacks`).
"""

from __future__ import annotations


def get_attack(name: str):
    """The attack class registered as ``name`` (one-line error listing the known ones)."""
    from ..registry import attacks

    return attacks.get(name)
