"""The sender process: drains the ring, batches, POSTs, spools and replays.

Started by a Streamer as ``python -I -S -c ... isstreamer.sender.main`` (:mod:`.main`). The data
path through it: :mod:`.loop` (the drain / batch / spill loop) -> :mod:`.encoder` (records to a
JSON batch) or :mod:`.aggregate` (downsampling rules, with :mod:`.ceiling`) -> :mod:`.delivery`
(what each answer means) over :mod:`.transport` (HTTP, in :mod:`.watched`'s worker thread) ->
:mod:`.spool` (what cannot be delivered now) and :mod:`.replay` (sending it later); the idle
sender sleeps on :mod:`.doorbell`.

This package's ``__init__`` imports nothing: a producer that reads a default from
:mod:`.spool` never imports the HTTP stack.
"""
