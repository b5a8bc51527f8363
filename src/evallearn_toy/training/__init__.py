"""Training of every toy-world artefact, deterministically from seeds, split by concern:

* :mod:`.architecture`: the modules (shared small builders of :mod:`evallearn.models.tiny` at the
  toy sizes), noise schedules, the pipeline and its fp16 save;
* :mod:`.budgets`: :class:`Budgets`, the steps and settings the shipped weights were made with;
* :mod:`.data`: rendered training sets and the captioned batches of the text-to-image stage;
* :mod:`.ema`: the weight average that is saved;
* :mod:`.checkpoints`: the text-to-image stage's resumable ``state.pt``;
* :mod:`.stages`: the classifier, VAE and text-to-image training loops;
* :mod:`.evaluate`: classifier accuracy, VAE PSNR and the ground-truth bar;
* :mod:`.recipe`: :func:`train_all`, every stage in order (``eval-learn toy train``).

A run is a pure function of its seed and budgets on the same torch build and thread count.
"""

from .budgets import Budgets
from .recipe import train_all

__all__ = ["Budgets", "train_all"]
