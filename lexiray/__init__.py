"""lexiray: tune LoRA / QLoRA fine-tuning of small causal LMs with Ray Tune + Ray Train."""

import logging
import warnings

from lexiray.errors import ConfigError, DataError, LexirayError, ResourceError

# bitsandbytes' CPU backend warns on import, in every trial worker, that it could not fetch
# an optional kernel from the Hugging Face hub; its own fallback is what runs, so hide it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft 0.21 still reads transformers' old `is_gradient_checkpointing` name when it wraps a
# model (lexiray itself uses the `activation_checkpointing` names): nothing a user can change.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "LexirayError", "ResourceError", "__version__"]
