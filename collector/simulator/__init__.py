"""runmeter's OpenAI simulator: a real HTTP server that speaks the exact wire format.

It is the only simulated part of runmeter's tests and demo. Its economics (``economics.py``) are
private: ``analysis/`` never imports this package.
"""

from collector.simulator.app import Simulator, SimulatorConfig

__all__ = ["Simulator", "SimulatorConfig"]
