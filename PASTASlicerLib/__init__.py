"""Slicer helpers shared by the PASTA and PASTASynth modules, importable without the Slicer GUI.

``mrml`` is the MRML helper layer (nodes <-> SimpleITK, segmentations, terminology), ``jobs``
runs PASTALib's CLI and the modules' runners as subprocesses with progress and cancel, and
``dependencies`` checks and installs PASTALib's heavy Python packages. Not a module: installed
next to the modules into Slicer's qt-scripted-modules folder (like Slicer's own DICOMLib), where
both modules import it. Nothing here imports Qt, ``slicer.app`` or torch at import time.
"""
