"""Everything that needs torch: import, convert, train, evaluate and export.

``engine`` imports uploaded models (ONNX, safetensors with a built-in architecture,
weights-only ``.pt``), converts them with torch.fx into factorized-binary twins (weights
parametrized by a TensorLy decomposition, binarized with sign, learned scales, binary
activations), fine-tunes them by distillation, and exports the packed ``.bfm`` file that
``runtime`` executes. It may import ``runtime`` (to check an export) but never ``api``,
``worker`` or ``db``; it is driven through plain function calls and callbacks.
"""
