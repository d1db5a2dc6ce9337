"""Training loops: the ensemble runner and its collaborators (``runner`` with ``collect``,
``state`` and ``signals``) and the PBT population runner (``pbt``). They own envs, logs and
checkpoints; they import ``cpo.algo``, ``cpo.models`` and ``cpo.utils``."""
