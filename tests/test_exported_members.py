"""The public surface is exactly what ``__all__`` says, and each name is importable."""

from __future__ import annotations

import analysis
import collector


def test_collector_exports_recorder_only() -> None:
    assert collector.__all__ == ["Recorder"]
    from collector import Recorder

    assert Recorder.__module__ == "collector.recorder"


def test_analysis_exports_resolve() -> None:
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None, name
    assert len(set(analysis.__all__)) == len(analysis.__all__)
