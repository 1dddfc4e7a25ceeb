"""PASTALib: the library behind SlicerPASTA.

Subpackages: ``io`` (read/write CT and label maps), ``geometry`` (canonical 1 mm LPS grid),
``anatomy`` (organ masks, study type, contrast phase, healthy-organ check), ``synth``
(PASTA-Gen lesion synthesis and structured reports), ``cli`` (the ``pasta`` command).

Importing this package never imports Slicer, Qt or torch.
"""

__version__ = "0.1.0"
