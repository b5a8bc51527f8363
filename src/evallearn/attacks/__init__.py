"""Adversarial prompt attacks on the *unlearned* pipeline: Ring-A-Bell, MMA-Diffusion, P4D.

Each attack is an :class:`~.base.Attack` with paper-default budgets as parameters; results are
cached by spec hash (attack, params, target prompts, target model) and can be written to / read
from a CSV of precomputed prompts. The ``asr`` metric runs them (``attack: {name, params}``).
"""

ATTACKS = {
    "ring_a_bell": "evallearn.attacks.ring_a_bell:RingABell",
    "mma_diffusion": "evallearn.attacks.mma_diffusion:MMADiffusion",
    "p4d": "evallearn.attacks.p4d:P4D",
}


def get_attack(name: str):
    import importlib

    from ..errors import UserError

    if name not in ATTACKS:
        raise UserError(f"unknown attack '{name}'; known: {', '.join(ATTACKS)}")
    module, cls = ATTACKS[name].split(":")
    obj = getattr(importlib.import_module(module), cls)
    obj.name = name
    return obj
