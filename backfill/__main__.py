from backfill.cli import entry

entry()
