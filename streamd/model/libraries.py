"""Log lines of the model's libraries that tell a streamd user nothing, quieted before those libraries load.

torchao (int8/fp8 weights) is installed with streamd. Importing it, which diffusers and transformers do as soon
as they find it, logs that its CUDA-only kernels cannot load on a CPU build, that Triton is absent, that some of
its enums use a deprecated torch API, and (diffusers) that older torchao tensor classes are missing. None of this
affects what streamd runs, and it would greet every `streamd` command. Errors still get through.
"""

from __future__ import annotations

import logging

QUIET_LOGGERS = (
    "torchao",  # "Failed to load .../_C_mxfp8...so" on CPU builds, "Detected no triton"
    "torch.utils._pytree",  # torchao's enums registered through a deprecated pytree API
    "diffusers.quantizers.torchao.torchao_quantizer",  # "Unable to import `torchao` Tensor objects"
)


def quiet_library_logs() -> None:
    """Raise the level of QUIET_LOGGERS to ERROR (idempotent)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
