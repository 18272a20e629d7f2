"""lexiray: tune LoRA / QLoRA fine-tuning of small causal LMs with Ray Tune + Ray Train."""

from lexiray.errors import ConfigError, DataError, LexirayError, ResourceError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "LexirayError", "ResourceError", "__version__"]
