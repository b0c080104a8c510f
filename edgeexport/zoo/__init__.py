"""The model zoo: one module per family, each registering thin builders (families are found by
package discovery when the registry is first asked, like the targets).

>>> from edgeexport.zoo import create_model, list_models
>>> model = create_model("lraspp_mobilenetv3")          # seeded weights, BN re-estimated on photos
>>> model = create_model("pyconvresnet50", weights="ckpt.pth")
"""
from edgeexport.zoo.registry import (  # noqa: F401
    ModelMeta,
    build_model,
    create_model,
    get_entry,
    get_meta,
    list_models,
    register_model,
    resolve_name,
    resolve_weights,
)
