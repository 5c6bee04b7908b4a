"""Names and parsing for training requests, without importing TensorFlow (the CLI builds its
parser from these, and `semspark sql` should not pay for TensorFlow)."""
from __future__ import annotations

from dataclasses import dataclass

ARCHITECTURES = ("alexnet", "inception_v3", "inception_v4", "inception_resnet_v2")
MODES = ("scratch", "feature_extraction", "fine_tuning", "feature_extraction_then_fine_tuning")
MIN_INPUT_SIZE = 75


class ModelError(ValueError):
    """An architecture, mode or initialisation that cannot be used; the message says why."""


@dataclass(frozen=True)
class Init:
    kind: str          # random | imagenet | model
    value: str = ""    # the weights file, or NAME/VERSION

    def __str__(self) -> str:
        return self.kind if self.kind == "random" else f"{self.kind}:{self.value}"


def parse_init(text: str) -> Init:
    kind, _, value = text.partition(":")
    if kind == "random" and not value:
        return Init("random")
    if kind in ("imagenet", "model") and value:
        return Init(kind, value)
    raise ModelError(f"--init {text!r}: use random, imagenet:PATH (a local Keras weights file) "
                     "or model:NAME/VERSION")
