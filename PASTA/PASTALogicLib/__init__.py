"""Logic behind the PASTA Slicer module (segmentation, structured report, few-shot),
importable without the Slicer GUI. Uses the MRML helper layer ``PASTASynthLib.mrml``
(both packages install side by side into Slicer's qt-scripted-modules folder).
Nothing here imports Qt, ``slicer.app`` or torch at import time.
"""
