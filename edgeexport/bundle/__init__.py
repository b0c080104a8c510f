"""Parity bundles: verify an artifact on the machine that will run it.

``write_bundle`` (on the build host) puts in one folder: the artifact, the input tensors
(``inputs.npz``), the reference outputs computed by eager PyTorch for exactly those inputs
(``reference.npz``), the tolerances and a manifest (versions, SHA-256 hashes, shapes, names).

``verify_bundle`` (on the target: a Mac, a Jetson, a phone-class board) runs the artifact
with the runtime installed there and writes the same parity and latency report. It imports
neither torch nor any model code; only the runtime of the artifact's backend (ExecuTorch's
runtime itself depends on torch).

A bundle is untrusted input on the machine that verifies it: containment, strict validation and
signatures are :mod:`~edgeexport.bundle.manifest`'s. The package is split by job:
:mod:`~edgeexport.bundle.manifest`, :mod:`~edgeexport.bundle.write` and :mod:`~edgeexport.bundle.verify`;
keys are :mod:`edgeexport.keys`.
"""
from edgeexport.bundle.manifest import (  # noqa: F401
    FORMAT_VERSION,
    INPUTS,
    MANIFEST,
    REFERENCES,
    SIGNATURE,
    check_signature,
    is_bundle,
    load_bundle,
    read_manifest,
    sign_manifest,
    signature_info,
    signed_bytes,
)
from edgeexport.bundle.verify import make_runner, verify_bundle  # noqa: F401
from edgeexport.bundle.write import write_bundle  # noqa: F401
from edgeexport.keys import fingerprint, generate_keypair, load_private_key, load_public_key  # noqa: F401
from edgeexport.util import sha256  # noqa: F401
