"""runmeter's collector: record every OpenAI run an application makes (see :class:`Recorder`)."""

from collector.recorder import Recorder

__all__ = ["Recorder"]
