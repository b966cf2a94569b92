"""fleetgen agent: the on-device daemon, its runtime and the agent/controller contract.

Importing this package must stay cheap: heavy libraries (onnxruntime, tflite,
tokenizers) are imported only where a model is loaded.
"""

__version__ = "0.1.0"
