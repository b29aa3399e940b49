"""Fused SCSA (Spatial and Channel Synergistic Attention): drop-in module, functional API, backends."""
from .backends import BACKENDS, BackendUnavailableError
from .config import SCSAConfig
from .convert import convert_model
from .functional import scsa
from .module import SCSA
from .reference import scsa_reference
from .weights import SCSAWeights

__version__ = "0.1.0"
__all__ = ["SCSA", "SCSAConfig", "SCSAWeights", "scsa", "scsa_reference", "convert_model",
           "BACKENDS", "BackendUnavailableError"]
