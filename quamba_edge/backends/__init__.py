"""Backends behind one interface: a Runner runs one graph (feeds -> outputs); a System is {graph: Runner}."""
