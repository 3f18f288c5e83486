"""orchestra's one time format, in every language: seconds and the time zone
("2026-12-02 02:41:07 UTC"). Django's locale formats stop at minutes and name no zone."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
