"""edgeexport: take PyTorch vision models to edge runtimes and prove they still compute the same.

The library API mirrors the CLI:

>>> from edgeexport import zoo, pipeline, recipe
>>> r = recipe.Recipe.from_yaml("recipes/lraspp_mobilenetv3.yaml")
>>> report = pipeline.run(r)

Optional backends (CoreML, TensorRT, ExecuTorch) are imported lazily, only by the
stage that needs them.
"""
__version__ = "0.1.0"
