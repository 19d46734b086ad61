"""Capture: sources and cameras, locating cells, field motion and slide position, counting (pure),
tracking, the capture loop and its summary, the live page (web/live.*) and the web server guard
it shares with the lab's review page.

Imports core, never the lab: the loop writes to a SessionSink (sink.py) that the command passes in.
"""
