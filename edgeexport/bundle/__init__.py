"""Parity bundles: verify an artifact on the machine that will run it.

``write_bundle`` (on the build host) puts in one folder: the artifact, the input tensors
(``inputs.npz``), the reference outputs computed by eager PyTorch for exactly those inputs
(``reference.npz``), the tolerances and a manifest (versions, SHA-256 hashes, shapes, names).

``verify_bundle`` (on the target: a Mac, a Jetson, a phone-class board) runs the artifact
with the runtime installed there and writes the same parity and latency report. It imports
neither torch nor any model code; only the runtime of the artifact's backend (ExecuTorch's
runtime itself depends on torch).

The package is split by job: :mod:`~edgeexport.bundle.manifest` (schema, strict reading, containment,
hashes, signatures), :mod:`~edgeexport.bundle.write` and :mod:`~edgeexport.bundle.verify`; keys are
:mod:`edgeexport.keys`.

A bundle is untrusted input on the machine that verifies it:

* **Containment.** Every file a manifest names is a plain file name (letters, digits, ``. _ + -``)
  that must resolve inside the bundle: no absolute paths, no ``..``, no sub-folders, no symlink
  that leads out, no folder where a file is expected, nothing but regular files inside a folder
  artifact (an ``.mlpackage``). The runner opens exactly the files whose hashes were checked.
* **Validation.** The manifest is parsed strictly (no duplicate keys, no NaN/Infinity, at most
  16 MiB) and checked against a schema; the arrays must match the shapes it declares. Anything
  malformed is a one-line :class:`UserError`.
* **Signatures** (optional, Ed25519 through ``cryptography``). Hashes only catch accidents:
  whoever edits a reference output can rewrite its hash. ``write_bundle(sign_key=...)`` adds a
  ``signature`` block: ``{"algorithm": "ed25519", "public_key": HEX, "value": HEX}``, where
  ``value`` signs :func:`signed_bytes` -- a fixed context line followed by the canonical JSON
  (sorted keys, no spaces, ASCII) of the whole manifest without its ``signature`` key. The
  manifest holds the SHA-256 of every file the bundle uses (artifact, companions, inputs,
  references), so the signature covers them all. A signature that does not verify is always
  refused; ``trust_keys`` additionally refuses a bundle that is unsigned or signed by any other
  key. Key fingerprints are the SHA-256 (hex) of the raw 32-byte public key.
"""
from edgeexport.bundle.manifest import (  # noqa: F401
    FORMAT_VERSION,
    INPUTS,
    MANIFEST,
    REFERENCES,
    SIGNATURE,
    check_signature,
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
