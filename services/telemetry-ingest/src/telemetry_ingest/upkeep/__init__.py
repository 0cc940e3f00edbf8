"""Background upkeep of the readings store: meter rollups, daily partitions, closed days reordered."""
