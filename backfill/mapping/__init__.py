"""Logs that are not in Miso's shape (CSV/TSV, JSON lines of any shape), mapped declaratively.

The one way in is `build_transform(settings)`: the [mapping] table of the config file, checked
and compiled, as a BlockTransform between the reader and validation (None for native input).
`preview` also asks a transform for what it observed (`Observations`).

    spec          the [mapping] table: its schema and its checks at start-up
      where         the config line an error names
      miso_fields   the fields a mapping may fill, from the schema's types
    compiler      the spec as one generated function per file (source record -> Miso JSON)
      shapes        how a CSV row or a JSON object is read
      codegen       writing and compiling the function
      conversions   the value conversions (number, datetime, epoch_s, split, ...)
      refusals      a record left out on purpose, refused, or failing a rule
    csvrecords    CSV records out of physical lines (framing, parsing, resume points)
    transform     files of blocks of lines -> blocks of Miso records (the BlockTransform)
"""

from backfill.mapping.transform import (
    MappingTransform,
    Observations,
    build_transform,
    map_file_blocks,
)

__all__ = ["MappingTransform", "Observations", "build_transform", "map_file_blocks"]
