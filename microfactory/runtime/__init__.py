"""The runtime: what drives the machines, above the domain packages."""
