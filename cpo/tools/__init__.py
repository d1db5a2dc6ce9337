"""What users run around training: evaluation, ONNX / TorchScript export and videos
(``evaluation``, behind eval.py and cpo.load_policy) and sweep reports (``report``,
``python -m cpo.tools.report``). The top layer: imports the runners to rebuild policies."""
