"""The learning core: rollout storage and targets (``rollout``), the pure loss functions
(``losses``), the PPO / SAPG / CPO learner, its batch and its update (``learner``),
importance-sampling and KL diagnostics (``diagnostics``), the DIAYN discriminator
(``discriminator``) and EPO's genetic operators (``evolution``). Imports ``cpo.models`` and
``cpo.utils`` only: no envs, no files, no loop."""
