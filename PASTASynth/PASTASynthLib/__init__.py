"""Logic behind the PASTASynth Slicer module, importable without the Slicer GUI.

``mrml`` is the MRML helper layer (shared with the PASTA module), ``logic`` holds
:class:`SynthesisLogic`, ``scenarios`` the checks that both pytest (with PyPI
``slicer-core``) and ``PASTASynthTest.runTest`` (inside Slicer) run, and
``dependencies`` the check / install plan for PASTALib's heavy Python packages.
Nothing here imports Qt, ``slicer.app`` or torch at import time.
"""
