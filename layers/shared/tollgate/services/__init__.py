"""Use cases. Services take plain values and a unit of work, and raise domain errors; no HTTP, no events."""
