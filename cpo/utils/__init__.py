"""Infrastructure under the learning code, with no learning in it: the configuration schema
and its validation (``config``), checkpoints and the run-directory lock (``checkpoint``),
TensorBoard / W&B / text logs (``logger``) and torchrun process groups (``distributed``).
Imports nothing else from ``cpo``."""
