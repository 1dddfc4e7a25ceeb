"""Logic behind the PASTA Slicer module (segmentation, structured report cards, few-shot),
importable without the Slicer GUI: ``logic`` (MRML side, CLI commands, checkpoints), ``reports``
(the report-card model) and ``scenarios`` (checks run by pytest and PASTATest.runTest). Uses the
MRML helper layer ``PASTASlicerLib.mrml`` (installed side by side into Slicer's
qt-scripted-modules folder). Nothing here imports Qt, ``slicer.app`` or torch at import time.
"""
