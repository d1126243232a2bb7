"""The overreach report: ``model`` (calls counted, reduced to the report document), ``replay``
(a decision log read back as the live proxy counted it), ``prose`` (the findings in plain words)
and one renderer per format: ``text``, ``markdown``, ``junit``, ``html``."""
