"""microfactory: the operations server for makerspaces and microfactories."""

__version__ = "0.1.0"
