"""clipbias: locate and correct bias carried by attention heads of CLIP vision transformers."""

__version__ = "0.1.0"
