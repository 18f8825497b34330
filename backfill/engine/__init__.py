"""Wiring the pipeline: reader -> bounded queue -> N workers -> checkpoint, and shutdown.

    reader task ──Batch──> asyncio.Queue(maxsize=concurrency) ──> worker x concurrency
      (read, validate,                                            (inflight, the batch's
       batch; one file                                             journey in delivery.py,
       after another)                                              dead letters, acked)

Memory is bounded by `2 x concurrency` batches (`--max-concurrency` with `--concurrency auto`:
`Settings.max_in_flight` workers, each holding one batch while it waits for a slot).
Every task is owned by one TaskGroup.
A stop (signal, fatal answer, too many invalid records) stops the reader and every retry
backoff at once, lets requests in flight finish for `drain_timeout` seconds, then cancels
them; whatever was cancelled stays `inflight` in the checkpoint and is handled as ambiguous
on resume.
"""

from backfill.engine.leg import Engine

__all__ = ["Engine"]
