"""Logic behind the PASTASynth Slicer module, importable without the Slicer GUI.

``logic`` holds :class:`SynthesisLogic`, ``reader_study`` the blinded reader study's MRML side,
``totalsegmentator_job`` the organ segmentation run as a subprocess, and ``scenarios`` the
checks that both pytest (with PyPI ``slicer-core``) and ``PASTASynthTest.runTest`` (inside
Slicer) run. The shared Slicer helpers (MRML layer, jobs, dependencies) are in PASTASlicerLib.
Nothing here imports Qt, ``slicer.app`` or torch at import time.
"""
