"""The live explorer (``fastconv explore RUN_DIR``): a local web page that
looks inside a trained network as you pick, upload or film an input.

:class:`Explorer` computes what the page shows; :func:`create_app` (in
:mod:`fastconv.analysis.explore.server`, which needs the ``explore`` extra:
FastAPI and uvicorn) serves it. This package is not imported by
``fastconv.analysis`` itself, so the other tools work without the extra.
"""
from fastconv.analysis.explore.explorer import ExploreError, Explorer, Picture
from fastconv.analysis.explore.images import UploadError

__all__ = ["Explorer", "ExploreError", "Picture", "UploadError"]
