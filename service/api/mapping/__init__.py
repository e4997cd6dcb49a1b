"""Pure functions between protobuf messages and table entities."""
