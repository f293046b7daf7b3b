"""shaper-deploy: turn a SuperShaper super BERT into fast, validated ONNX models per device.

Importing the package is cheap: nothing here imports torch. Each stage lives in its own module:
``shape`` -> ``supernet`` -> ``slicing`` -> ``fusion`` -> ``export`` -> ``profiling`` ->
``predictor`` -> ``planner`` -> ``serving``; dependencies point one way down that chain.
"""

__version__ = "0.1.0"
