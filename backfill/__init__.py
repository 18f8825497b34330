"""backfill: resumable, high-throughput historical backfill for the Miso Data API."""

__version__ = "0.1.0"
