"""The study: one module per chapter of the notebooks, their settings, figures and the
runner behind ``make reproduce``. Built on ``pan_utils.engine``, never the reverse."""
