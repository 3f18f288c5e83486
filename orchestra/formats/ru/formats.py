"""The same time format as in English (see ``orchestra.formats.en.formats``)."""

from orchestra.formats.en.formats import DATETIME_FORMAT, SHORT_DATETIME_FORMAT

__all__ = ["DATETIME_FORMAT", "SHORT_DATETIME_FORMAT"]
