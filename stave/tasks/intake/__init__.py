"""Prompt rows in: reading files (read.py) and checking every row (check.py).

A file is read in passes, never whole. One that cannot be read as its format (not found,
wrong encoding, not CSV, no `prompt` column, unknown columns, no rows) raises one InvalidInput
naming the file and, where it can, the line. A readable file never fails as a whole because
of a bad row: each bad row becomes a Rejection (row, field, reason) and the other rows go on.

Rows are numbered from 1 in data order (the CSV header is not a row); CSV and JSONL rejections
also carry the line in the file.
"""

from stave.tasks.intake.check import check_parameters, check_row, check_rows, checked
from stave.tasks.intake.fields import COLUMNS, MAX_SEED, PARAMETERS, SCHEDULERS, PromptRow
from stave.tasks.intake.read import read_file, read_object, rows_from_parameter
from stave.tasks.intake.rows import (
    FORMATS,
    KEPT_REJECTIONS,
    MAX_FILE_BYTES,
    CheckedRow,
    RawRow,
    Rejection,
    Rejections,
    SourceRows,
)
from stave.tasks.intake.upload import Uploaded, upload_prompts

__all__ = [
    "COLUMNS",
    "FORMATS",
    "KEPT_REJECTIONS",
    "MAX_FILE_BYTES",
    "MAX_SEED",
    "PARAMETERS",
    "SCHEDULERS",
    "CheckedRow",
    "PromptRow",
    "RawRow",
    "Rejection",
    "Rejections",
    "SourceRows",
    "Uploaded",
    "check_parameters",
    "check_row",
    "check_rows",
    "checked",
    "read_file",
    "read_object",
    "rows_from_parameter",
    "upload_prompts",
]
