"""Interoperability: export distilled sets to the PyTorch world and import sets made elsewhere.

* :mod:`jdd.interop.formats`: safetensors / npz / pt tensor files (``.pt`` read weights-only,
  without torch and without running the file's pickle);
* :mod:`jdd.interop.pngs`: folders of PNGs per class;
* :mod:`jdd.interop.export`: ``jdd export RUN`` (pixel space, hard and soft labels, learned rate,
  ``export.json`` with the preprocessing and the evaluation recipe);
* :mod:`jdd.interop.imports`: ``jdd import FILE --dataset NAME --out RUN`` (a run folder that
  ``jdd evaluate`` scores).
"""
