"""dsclab: the Diffusion Sample-Complexity Lab core library (numerics only; no Prefect)."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("dsclab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
