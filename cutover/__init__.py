"""cutover: staged blue/green traffic cutovers on real load balancers and DNS."""

__version__ = "0.1.0"
