"""Built-in ``eval-learn`` commands that drive whole runs (they sit above the runner).

Each is registered in the ``evallearn.cli`` entry-point group, the same way an outside package
adds a command; :mod:`evallearn.cli` mounts them by name, importing a command's module only when
that command is used.
"""
