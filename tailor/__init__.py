"""tailor: tailor pretrained image models to a product catalog."""

__version__ = "0.1.0"
