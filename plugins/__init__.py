"""Protocol plugins: the contract (``plugins.base``), the registry and the built-ins."""
